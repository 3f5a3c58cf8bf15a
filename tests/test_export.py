"""Export of the deployed student, load_export, eval of runs and exports, and their CLI."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from redistill.artifact import load_export
from redistill.errors import UserError
from redistill.memory import analyze_memory
from redistill.modelref import resolve_model
from redistill.train import load_config, run_training
from redistill.train.export import evaluate_path, export_run, load_run_model

TINY = {
    "model": {"student": "cifar_resnet8", "options": {"width": 4}},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "synthetic": {"train_size": 96, "test_size": 32}},
    "optim": {"lr": 0.05},
    "run": {"epochs": 1, "progress": False},
}


@pytest.fixture(scope="module")
def red_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run_training(load_config(TINY), root / "teacher")
    cfg = load_config(
        TINY,
        [
            "model.student=cifar_resnet8:strides=4,1,1,1",
            f"model.teacher_checkpoint={root / 'teacher'}",
            "distill.method=red",
            "distill.pairs=[{student: conv1, teacher: layer3.0, side: out, red: {encoder_kernel: 1}}]",
        ],
    )
    summary = run_training(cfg, root / "red")
    return root, summary


def test_export_holds_the_deployed_student_only(red_run, tmp_path):
    root, summary = red_run
    out = export_run(root / "red", tmp_path / "exp")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "spec.yaml"]
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    layout = spec["surgery"]["red"]  # recorded by the method that made it, under its name
    assert layout[0]["layer"] == "conv1" and layout[0]["encoder_kernel"] == 1
    deployed = load_run_model(root / "red")[0]
    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == set(deployed.state_dict())  # no teacher, no training-only modules
    assert any(".red_out." in k for k in weights)

    model, info = load_export(out)
    assert "REDBlock" in str(model)
    assert info.source == "export" and info.input_shape == tuple(summary["input_shape"])
    assert info.surgery == spec["surgery"] and info.strides == (4, 1, 1, 1)
    x = torch.randn(3, *summary["input_shape"][1:])
    with torch.no_grad():
        assert torch.equal(model(x), deployed(x))
        # The one resolver reads exports too (by directory or by its spec.yaml).
        assert torch.equal(resolve_model(str(out / "spec.yaml")).module(x), deployed(x))
    assert analyze_memory(model, info.input_shape).peak_bytes == summary["peak_bytes_live"]


def test_eval_of_run_and_export_agree_with_summary(red_run, tmp_path):
    root, summary = red_run
    out = export_run(root / "red", tmp_path / "exp")
    by_run, by_export = evaluate_path(root / "red"), evaluate_path(out)
    assert by_run["acc"] == by_export["acc"] == summary["test_acc"]
    assert by_run["count"] == 32
    assert evaluate_path(out, split="val")["acc"] == summary["val_acc"]


def test_bad_exports_name_the_problem(red_run, tmp_path):
    root, _ = red_run
    out = export_run(root / "red", tmp_path / "exp")
    with pytest.raises(UserError, match="not empty"):
        export_run(root / "red", out)
    with pytest.raises(UserError, match="not an export directory"):
        load_export(tmp_path)
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    spec["model"]["width"] = 8  # another architecture than the weights
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spec.yaml").write_text(yaml.safe_dump(spec))
    (bad / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match=r"shape mismatch.*conv1"):
        load_export(bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        load_export(bad)


def test_cli_train_eval_export(red_run, tmp_path, monkeypatch, capsys):
    import redistill.cli.main as cli

    monkeypatch.setattr(cli, "COMMANDS", ["redistill.cli.train", "redistill.cli.eval", "redistill.cli.export"])
    root, summary = red_run
    assert cli.main(["export", str(root / "red"), "--out", str(tmp_path / "e")]) == 0
    assert cli.main(["eval", str(tmp_path / "e"), "--split", "test"]) == 0
    assert f"{summary['test_acc']:.2f}%" in capsys.readouterr().out
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert cli.main(["train", str(cfg), "optim.lr=0.01", "--out", str(tmp_path / "run")]) == 0
    assert "test acc" in capsys.readouterr().out
    assert load_config(tmp_path / "run" / "config.yaml").optim.lr == 0.01
    assert cli.main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert cli.main(["train", str(cfg), "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "did you mean optim.lr" in err
    assert cli.main(["eval", str(tmp_path / "missing")]) == 2


def test_a_run_started_from_an_export_with_red_blocks_exports_again(red_run, tmp_path):
    """Fine-tuning from an export: its RED blocks are in the built model once, not inserted twice."""
    root, _ = red_run
    export_run(root / "red", tmp_path / "e1")
    cfg = load_config(TINY, [f"model.student={tmp_path / 'e1'}", "model.options={}"])
    run_training(cfg, tmp_path / "ft")
    export_run(tmp_path / "ft", tmp_path / "e2")
    model, _, _, _ = load_run_model(tmp_path / "ft")
    blocks = [n for n, m in model.named_modules() if type(m).__name__ == "REDBlock"]
    assert len(blocks) == 1, blocks
    deployed = load_export(tmp_path / "e2")
    x = torch.randn(2, *deployed.info.input_shape[1:])
    assert torch.equal(deployed.module(x), model.eval()(x))


def test_a_folder_named_like_a_model_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar_resnet8").mkdir()
    assert resolve_model("cifar_resnet8").info.name == "cifar_resnet8"
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not an export"):
        resolve_model("plain")
    with pytest.raises(UserError, match="model file not found: nosuch.yaml"):
        resolve_model("nosuch.yaml")


def test_class_count_in_model_options_is_refused(tmp_path):
    cfg = load_config(TINY, ["model.options={width: 4, num_classes: 7}"])
    with pytest.raises(UserError, match="model.options.num_classes is not an option: set model.num_classes"):
        run_training(cfg, tmp_path / "r7")


def test_derive_from_an_export_of_a_family(red_run, tmp_path):
    from redistill.models import derive_student

    root, _ = red_run
    export_run(root / "teacher", tmp_path / "t")
    teacher = load_export(tmp_path / "t")
    student = derive_student(teacher, 2)
    assert student.info.strides[0] == 2 * teacher.info.strides[0]
    assert student.info.spec["name"] == teacher.info.spec["name"]


def test_explicit_last_checkpoint_does_not_fall_back_to_best(red_run, tmp_path):
    import shutil

    root, _ = red_run
    shutil.copytree(root / "red", tmp_path / "nolast")
    (tmp_path / "nolast" / "last.pt").unlink()
    with pytest.raises(UserError, match="last.pt does not exist; use --checkpoint best"):
        export_run(tmp_path / "nolast", tmp_path / "e", "last")
