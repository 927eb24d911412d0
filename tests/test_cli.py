"""The scripts' flags are the config fields, and --help imports no TensorFlow."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from tlfast import cli
from tlfast import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "tlfast.train": config.TrainConfig,
    "tlfast.evaluate_main": config.EvaluateConfig,
    "tlfast.predict_main": config.PredictConfig,
    "tlfast.export_main": config.ExportConfig,
    "tlfast.data_service_main": config.ServiceConfig,
}


def _script_flags(module):
    """{flag name: enum choices or None} of the script's own flags, from
    its --helpfull (the module's section, absl's own flags left out)."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--helpfull"], capture_output=True,
        text=True, cwd=REPO, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO))
    own, section = {}, None
    for line in result.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
        elif section and section.endswith(module.replace(".", "/") + ".py"):
            match = re.match(r"  --(?:\[no\])?(\w+):( <([^>]*)>:)?", line)
            if match:
                choices = match.group(3)
                own[match.group(1)] = choices.split("|") if choices else None
    assert own, result.stdout[-2000:] + result.stderr[-2000:]
    return own


# Flags that do something else instead of the command (no setting).
ACTIONS = {"tlfast.train": {"list_backbones"}}


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_every_field_is_a_flag_and_every_flag_a_field(module):
    fields = {f.name: f.metadata.get("choices")
              for f in dataclasses.fields(SCRIPTS[module])}
    found = _script_flags(module)
    for name in ACTIONS.get(module, ()):
        found.pop(name)
    assert set(found) == set(fields), (
        f"fields without a flag: {set(fields) - set(found)}; flags without a "
        f"field: {set(found) - set(fields)}")
    for name, choices in fields.items():
        assert found[name] == (list(choices) if choices else None), name


def test_feature_dtype_is_a_flag_of_tlfast_train():
    # Its cache error message tells users to pass --feature_dtype=float32.
    assert _script_flags("tlfast.train")["feature_dtype"] == ["float16",
                                                             "float32"]


def test_a_field_without_help_fails_flag_generation():
    @dataclasses.dataclass(frozen=True)
    class Added(config.ExportConfig):
        new_setting: int = 3  # Added without config.setting(): no flag.

    with pytest.raises(TypeError, match="new_setting has no help"):
        cli.define_flags(Added, flags.FlagValues())


def test_generated_flags_round_trip_to_the_config():
    values = flags.FlagValues()
    cli.define_flags(config.TrainConfig, values)
    values(["prog", "--data_dir=/d", "--output_dir=/o", "--noreuse_outputs",
            "--feature_dtype=float32", "--image_size=96", "--resize=pad"])
    made = cli.config_from_flags(config.TrainConfig, values)
    assert made == config.TrainConfig(
        data_dir="/d", output_dir="/o", reuse_outputs=False,
        feature_dtype="float32", image_size=96, resize="pad")


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_help_imports_no_tensorflow(module):
    code = (f"import sys, runpy\nsys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'jax', 'tensorflow_datasets')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, cwd=REPO, timeout=60,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert "HEAVY []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_bad_settings_are_one_error_line_before_any_import(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tlfast.evaluate_main", "--model=m",
         "--data_dir=d", f"--output_dir={tmp_path}", "--top_k=0"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tlfast-evaluate: error: top_k must be an integer >= 1. Received: "
        "top_k=0")
