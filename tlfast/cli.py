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
    """The `config_cls` that the parsed flags describe (checked).

    Raises:
      ValueError: A required setting is missing, or a value is bad.
    """
    for field in dataclasses.fields(config_cls):
        if field.metadata.get("required") and flag_values[field.name].value is None:
            raise ValueError(f"--{field.name} is required: "
                             f"{field.metadata['help']}")
    return config_cls(**{field.name: flag_values[field.name].value
                         for field in dataclasses.fields(config_cls)})


class _Console(logging.Filter):
    """tlfast's own lines at INFO; other libraries' only when they fail
    (ERROR), unless --verbosity asks for more (TFDS's "Using custom data
    configuration" dumps, deprecation notices, TF's tracing notes)."""

    def __init__(self, verbose):
        super().__init__()
        self.verbose = verbose

    def filter(self, record):
        if record.name == "tlfast" or record.name.startswith("tlfast."):
            return record.levelno >= logging.INFO
        return record.levelno >= (logging.INFO if self.verbose else logging.ERROR)


def _native_output_aside():
    """Sends what native code writes to stderr (TensorFlow's C++ log lines,
    printed before its log level is read, oneDNN and CUDA notices) to
    /dev/null, or to the run's log file once `log_to_file` names one;
    Python's own stderr keeps the console."""
    import os

    console = os.dup(2)
    sys.stderr = os.fdopen(console, "w", buffering=1, encoding="utf-8",
                           errors="backslashreplace")
    sink = os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    os.close(sink)
    _native[0] = True


_native = [False]  # Whether native stderr is set aside.


def configure_script_logging(verbose=False):
    """Plain progress lines on stderr for the command-line scripts.

    Args:
      verbose: Show other libraries' INFO and WARNING lines too, and what
        native code writes to stderr.
    """
    if not verbose:
        _native_output_aside()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(_Console(verbose))
    logging.basicConfig(level=logging.DEBUG, handlers=[console], force=True)
    for name in ("tensorflow", "absl", "jax", "matplotlib", "PIL", "h5py"):
        # Their DEBUG chatter is never wanted, not even in the log file.
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        import os

        # TensorFlow's C++ INFO/WARNING lines; read when it is imported.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def log_to_file(path):
    """Also writes every log line (DEBUG and up, all libraries) to `path`,
    and native code's stderr when `configure_script_logging` set it aside."""
    import os

    # A log grows as the run goes: appended, not written atomically; both
    # writers append, so their lines never overwrite each other.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    if _native[0]:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
    return handler


def exit_status(prog, problems):
    """Prints each problem as an error line; 1 when there are any, else 0.

    For what a finished command found wrong without failing (an export that
    failed or failed its parity check).
    """
    for line in problems:
        print(f"{prog}: error: {line}", file=sys.stderr)
    return 1 if problems else 0


def run_script(prog, config_cls, work, flag_values=flags.FLAGS, actions=None):
    """`app.run` of a script: flags -> `config_cls` -> `work(config)`.

    Every error becomes one line `<prog>: error: ...` on stderr and exit
    status 2, never a traceback: the errors tlfast raises for bad input
    (ValueError, OSError, RuntimeError) say what and how to fix; anything
    else is named with its type, and its traceback goes to the log (shown
    with --verbosity=1, and in a run's log file). Ctrl-C exits with 130.

    Args:
      prog: The command's name, for error lines.
      config_cls: The config dataclass whose flags were defined.
      work: Callable(config) -> exit status (0 when fine).
      actions: {bool flag name: callable() -> exit status} for flags that
        do something else instead (`tlfast-train --list_backbones`).
    """

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        verbose = flag_values["verbosity"].value >= 1
        configure_script_logging(verbose)
        try:
            for name, action in (actions or {}).items():
                if flag_values[name].value:
                    return action()
            return work(config_from_flags(config_cls, flag_values))
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except (ValueError, OSError, RuntimeError) as e:
            logging.getLogger("tlfast.cli").debug("Error", exc_info=True)
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # Not foreseen: still one line, not a dump.
            logging.getLogger("tlfast.cli").log(
                logging.INFO if verbose else logging.DEBUG, "Traceback",
                exc_info=True)
            print(f"{prog}: error: unexpected {type(e).__name__}: {e} "
                  "(--verbosity=1 shows the traceback; please report it)",
                  file=sys.stderr)
            return 2

    app.run(main)
