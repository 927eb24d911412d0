import pytest

from tlfast import precision


def test_auto_is_float32_on_cpu():
    assert precision.resolve_precision("auto") == "float32"


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_values_pass_through(name):
    assert precision.resolve_precision(name) == name


def test_bad_value():
    with pytest.raises(ValueError, match="Received: precision='fp8'"):
        precision.resolve_precision("fp8")
