"""Typed run config: YAML loading, dotted overrides, errors that name the key."""

from pathlib import Path

import pytest
import yaml

from redistill.errors import UserError
from redistill.train.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": {"student": "cifar_resnet8"}}


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {student: cifar_resnet20}\noptim: {lr: 0.2}\ndata: {augment: {flip: false}}\n")
    cfg = load_config(path, ["optim.lr=0.05", "run.epochs=3", "distill.options.alpha=50", "schedule.milestones=[2, 4]"])
    assert cfg.optim.lr == 0.05
    assert cfg.run.epochs == 3
    assert cfg.data.augment.flip is False
    assert cfg.data.augment.crop == "pad"  # untouched fields keep their defaults
    assert cfg.distill.options == {"alpha": 50}
    assert cfg.schedule.milestones == [2, 4]


def test_null_override_and_int_widened_to_float():
    cfg = load_config({**BASE, "optim": {"lr": 1}, "distill": {"method": "red", "options": {}}}, ["distill.method=null"])
    assert cfg.distill.method is None
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["optim.lrr=0.1"], ["'optim.lrr'", "optim.lr"]),
        (["data.augment.flipp=true"], ["'data.augment.flipp'", "data.augment.flip"]),
        (["trainer.epochs=3"], ["'trainer'"]),
    ],
)
def test_unknown_key_is_named_with_suggestion(overrides, words):
    with pytest.raises(UserError) as err:
        load_config(BASE, overrides)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["optim.lr=fast"], ["'optim.lr'", "float", "str"]),
        (["run.epochs=2.5"], ["'run.epochs'", "int"]),
        (["run.epochs=true"], ["'run.epochs'", "int", "bool"]),  # bool is not an int here
        (["data.subset=[1]"], ["'data.subset'", "int or null"]),
        (["optim.betas=[0.9, x]"], ["'optim.betas[1]'", "float"]),
        (["data=3"], ["'data'", "mapping"]),
    ],
)
def test_wrong_type_names_key_and_expected_type(overrides, words):
    with pytest.raises(UserError) as err:
        load_config(BASE, overrides)
    for word in words:
        assert word in str(err.value)


def test_choice_errors_and_value_checks():
    with pytest.raises(UserError, match="optim.name.*sgd, adam, adamw"):
        load_config(BASE, ["optim.name=lamb"])
    with pytest.raises(UserError, match="did you mean fashion_mnist"):
        load_config(BASE, ["data.name=fashion"])
    with pytest.raises(UserError, match="model.student"):
        load_config({})
    with pytest.raises(UserError, match="milestones"):
        load_config(BASE, ["schedule.name=multistep"])
    with pytest.raises(UserError, match="teacher"):
        load_config(BASE, ["distill.method=red"])
    with pytest.raises(UserError, match="key=value"):
        load_config(BASE, ["optim.lr"])
    with pytest.raises(UserError, match="not found"):
        load_config("/nonexistent/run.yaml")


def test_resolved_yaml_round_trips():
    cfg = load_config(BASE, ["optim.name=adamw", "data.subset=100", "distill.pairs=auto", "model.teacher=x",
                             "model.teacher_checkpoint=t", "distill.method=red"])
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def _keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("options",):
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_example_config_documents_every_field():
    example = yaml.safe_load((REPO / "configs" / "example.yaml").read_text())
    assert _keys(example) == _keys(Config().to_dict())
    load_config(REPO / "configs" / "example.yaml")
