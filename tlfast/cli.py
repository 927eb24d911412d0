"""Command-line flags generated from `tlfast.config`, and the scripts' common main.

Every script is a config dataclass plus one function taking it:

    define_flags(config.TrainConfig)          # at import: one flag per field
    run_script("tlfast-train", config.TrainConfig, train)

A field's type picks the flag kind (str, int, float, bool), its `choices`
make an enum flag, its `required` a required flag, and its help text and
default are the flag's. Nothing here imports TensorFlow: `--help` answers
at once, and the work function imports what it needs.
"""

import dataclasses
import logging
import sys
import types
import typing

from absl import app
from absl import flags

# Flags defined here belong to the script that asked for them (absl credits
# the calling module, which `--help` lists as the script's own flags).
flags.disclaim_key_flags()

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, bool: flags.DEFINE_bool}


def _base_type(annotation):
    """`int` of `int`, `int | None` or `Optional[int]`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(
            annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def define_flags(config_cls, flag_values=flags.FLAGS):
    """Defines one absl flag per field of the dataclass `config_cls`."""
    for field in dataclasses.fields(config_cls):
        meta, kind = field.metadata, _base_type(field.type)
        if "help" not in meta:
            raise TypeError(f"{config_cls.__name__}.{field.name} has no help "
                            "text: declare it with tlfast.config.setting().")
        if meta.get("choices"):
            flags.DEFINE_enum(field.name, field.default, list(meta["choices"]),
                              meta["help"], flag_values=flag_values)
        elif kind in _DEFINE:
            _DEFINE[kind](field.name, field.default, meta["help"],
                          flag_values=flag_values)
        else:
            raise TypeError(f"{config_cls.__name__}.{field.name}: no flag "
                            f"kind for type {field.type!r}.")


def config_from_flags(config_cls, flag_values=flags.FLAGS):
    """The `config_cls` that the parsed flags describe (checked)."""
    return config_cls(**{field.name: flag_values[field.name].value
                         for field in dataclasses.fields(config_cls)})


def configure_script_logging():
    """Plain progress lines on stderr for the command-line scripts.

    TF's own INFO lines (SavedModel assets, tracing) would drown ours.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def exit_status(prog, problems):
    """Prints each problem as an error line; 1 when there are any, else 0.

    For what a finished command found wrong without failing (an export that
    failed or failed its parity check).
    """
    for line in problems:
        print(f"{prog}: error: {line}", file=sys.stderr)
    return 1 if problems else 0


def run_script(prog, config_cls, work, flag_values=flags.FLAGS):
    """`app.run` of a script: flags -> `config_cls` -> `work(config)`.

    Bad settings and the errors tlfast raises for bad input (ValueError,
    OSError, RuntimeError: their messages say what and how to fix) become
    one line `<prog>: error: ...` on stderr and exit status 2.

    Args:
      prog: The command's name, for error lines.
      config_cls: The config dataclass whose flags were defined.
      work: Callable(config) -> exit status (0 when fine).
    """
    for field in dataclasses.fields(config_cls):
        if field.metadata.get("required"):
            flags.mark_flag_as_required(field.name, flag_values)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        configure_script_logging()
        try:
            return work(config_from_flags(config_cls, flag_values))
        except (ValueError, OSError, RuntimeError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2

    app.run(main)
