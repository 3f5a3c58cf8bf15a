"""Typed run config: YAML loading, dotted overrides, errors that name the key."""

from pathlib import Path

import pytest
import yaml

from redistill.errors import UserError
from redistill.train.config import Config, load_config
from redistill.util import load_yaml

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


def test_yaml_12_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {student: cifar_resnet8}\noptim: {lr: 1e-3, weight_decay: 5E-4}\nschedule: {min_lr: .5e-6}\n")
    cfg = load_config(path, ["optim.momentum=9e-1", "optim.grad_clip=1E+1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.min_lr) == (1e-3, 5e-4, 0.5e-6)
    assert (cfg.optim.momentum, cfg.optim.grad_clip) == (0.9, 10.0)
    assert load_config(BASE, ["model.student=resnext18-4-11221"]).model.student == "resnext18-4-11221"


@pytest.mark.parametrize(
    "text, value",
    [("1e-3", 1e-3), ("1E+5", 1e5), ("-2e3", -2e3), (".5", 0.5), ("-.5", -0.5), ("1.", 1.0), ("1_000", 1000),
     ("0x10", 16), ("1e", "1e"), ("e5", "e5"), ("4,1,1,1", "4,1,1,1"), ("cifar_resnet20-4-111", "cifar_resnet20-4-111")],
)
def test_load_yaml_scalars(text, value):
    assert load_yaml(text, "x") == value
    assert type(load_yaml(text, "x")) is type(value)


def test_load_yaml_leaves_pyyaml_alone():
    # The YAML 1.2 resolver lives on the project's loader subclass only.
    assert yaml.safe_load("1e-3") == "1e-3"


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b]\n", None),  # a few aliases are fine
        ("a: &a [1]\nb: *a\n" + "".join(f"c{i}: *a\n" for i in range(1001)), "more than 1000 YAML aliases"),
        ("x: &x [*x]\n", "contains it"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: 1\na: 2\n", "duplicate key 'a' (line 2, column 1)"),
        ("a: [1, 2\n", "not valid YAML"),
        ("a: !!python/name:os.system\n", "python/name"),
        ("a: 1\n---\nb: 2\n", "single document"),
    ],
)
def test_load_yaml_refusals_are_one_line(text, words):
    if words is None:
        assert load_yaml(text, "doc")["c"] == [[[1, 1]] * 2] * 2
        return
    with pytest.raises(UserError) as err:
        load_yaml(text, "config doc.yaml")
    message = str(err.value)
    assert "config doc.yaml" in message and words in message and "\n" not in message


def test_config_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: {student: cifar_resnet8}  # café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9"):
        load_config(path)


def test_range_limits_themselves_are_accepted():
    cfg = load_config(BASE, [
        "optim.momentum=0", "optim.weight_decay=0", "optim.betas=[0, 0.999]", "optim.label_smoothing=0",
        "optim.grad_clip=null", "data.val_fraction=0", "data.workers=0", "data.augment.padding=0",
        "data.augment.randaugment_magnitude=30", "schedule.warmup_epochs=0", "schedule.milestones=[1, 2]",
        "run.seed=0", "distill.task_weight=0", "model.num_classes=1", "run.epochs=1",
    ])
    assert cfg.optim.betas == [0.0, 0.999] and cfg.data.augment.randaugment_magnitude == 30


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.grad_clip=-1", "config key 'optim.grad_clip' must be > 0 (or null), got -1.0"),
        ("optim.momentum=1", "config key 'optim.momentum' must be in [0, 1), got 1.0"),
        ("data.test_subset=-2", "config key 'data.test_subset' must be >= 1 (or null), got -2"),
        ("data.workers=-1", "config key 'data.workers' must be >= 0, got -1"),
    ],
)
def test_out_of_range_names_key_value_and_range(override, message):
    with pytest.raises(UserError) as err:
        load_config(BASE, [override])
    assert str(err.value) == message


def test_config_mapping_with_non_yaml_value_is_a_user_error():
    with pytest.raises(UserError, match="YAML cannot write"):
        load_config({**BASE, "model": {"student": "x", "options": {"f": object()}}})


def test_strings_that_look_like_yaml_12_floats_round_trip():
    cfg = load_config(BASE, ["data.root='1e3'", "run.device='.5'"])
    assert cfg.data.root == "1e3" and cfg.run.device == ".5"
    assert load_config(load_yaml(cfg.to_yaml(), "resolved config")) == cfg
