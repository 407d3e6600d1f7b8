import pytest

from tritonrag.common.params import model_param


def cfg(**values):
    return {"parameters": {k: {"string_value": v} for k, v in values.items()}}


def test_values_are_cast_like_the_default():
    config = cfg(n="7", ratio="0.5", name="x", flag="true")
    assert model_param(config, "n", 1) == 7
    assert model_param(config, "ratio", 1.0) == 0.5
    assert model_param(config, "name", "d") == "x"
    assert model_param(config, "flag", False) is True


def test_missing_empty_and_placeholder_values_give_the_default():
    config = cfg(empty="", placeholder="${index_path}")
    assert model_param(config, "absent", 3) == 3
    assert model_param(config, "empty", 3) == 3
    assert model_param(config, "placeholder", "dflt") == "dflt"
    assert model_param({}, "n", 5) == 5


def test_bad_values_name_the_parameter():
    with pytest.raises(ValueError, match="'n'"):
        model_param(cfg(n="seven"), "n", 1)
    with pytest.raises(ValueError, match="'flag'"):
        model_param(cfg(flag="maybe"), "flag", True)
