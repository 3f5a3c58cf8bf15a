"""benchmarks/fashion_mnist.py: protocol settings, aggregation over seeds and the results files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fashion_mnist.py"


@pytest.fixture(scope="module")
def fm(load_benchmark):
    return load_benchmark("fashion_mnist.py")


def _summary(kind: str, acc: float, val: float) -> dict:
    student = kind != "teacher"
    return {
        "model": {"name": "cifar_resnet20", "strides": [4, 1, 1, 1] if student else [1, 1, 2, 2]},
        "test_acc": acc,
        "val_acc": val,
        "peak_bytes_live": 37_632 if student else 150_528,
        "peak_bytes_layer": 37_632 if student else 150_528,
        "params": 274_810 if kind == "red" else 272_186,
        "flops": 26_000_000 if student else 62_000_000,
        "epochs": 20,
        "train_time_s": 10.0,
        "device": "cpu",
        "pairs": [{"student": "conv1", "teacher": "layer3.0", "side": "out"}] if kind == "red" else None,
    }


def test_protocol_overrides(fm, tmp_path):
    args = fm.parse_args(["--device", "cuda", "--batch-size", "256", "--data-root", "/d", "--out", str(tmp_path)])
    assert args.seeds == [0, 1, 2] and args.teacher_epochs == 20
    ov = fm.protocol_overrides(args, "red", 2)
    assert "data.subset=null" in ov and "run.seed=2" in ov and "optim.lr=0.2" in ov
    assert "data.root=/d" in ov and f"model.teacher_checkpoint={tmp_path / 'teacher_s2'}" in ov
    assert not any(o.startswith(("model.student", "distill.method")) for o in ov)
    quick = fm.parse_args(["--quick", "--out", str(tmp_path)])
    assert quick.seeds == [0, 1] and "run.epochs=1" in fm.protocol_overrides(quick, "teacher", 0)
    assert not any(o.startswith("model.teacher_checkpoint") for o in fm.protocol_overrides(quick, "vanilla", 0))
    small = fm.parse_args(["--subset", "5000", "--tag", "5k"])
    assert all("data.subset=5000" in fm.protocol_overrides(small, k, 0) for k in fm.kinds(small))
    assert fm.results_stem(small) == "fashion_mnist_5k"
    for bad in (["--subset", "0"], ["--subset", "60000"], ["--subset", "500", "--quick"]):
        with pytest.raises(SystemExit):
            fm.parse_args(bad)


def test_red_weights_reach_only_red_runs_and_their_names(fm, tmp_path):
    args = fm.parse_args(["--red-weights", "1", "1", "--red-kd", "--kd", "--out", str(tmp_path)])
    for kind in fm.kinds(args):
        ov = fm.protocol_overrides(args, kind, 0)
        red = kind in ("red", "red_kd")
        assert ("distill.options.w_task=1.0" in ov and "distill.options.w_distill=1.0" in ov) == red
        assert fm.weights_suffix(args, kind) == ("_w1-1" if red else "")
    plain = fm.parse_args(["--out", str(tmp_path)])
    assert fm.weights_suffix(plain, "red") == ""
    assert not any("w_task" in o for o in fm.protocol_overrides(plain, "red", 0))
    with pytest.raises(SystemExit):
        fm.parse_args(["--red-weights", "1"])


def test_shared_teacher_student_spec_and_red_kd_overrides(fm, tmp_path):
    spec = "cifar_resnet20:strides=4,1,1,1:stem_kernel=5"
    args = fm.parse_args(["--teacher", str(tmp_path / "t"), "--student", spec, "--red-kd", "--out", str(tmp_path)])
    assert fm.kinds(args) == ("teacher", "vanilla", "red", "red_kd")
    kd = fm.protocol_overrides(args, "red_kd", 1)
    assert f"model.teacher_checkpoint={tmp_path / 't'}" in kd and "distill.method=red_kd" in kd
    assert f"model.student={spec}" in kd and f"model.student={spec}" in fm.protocol_overrides(args, "vanilla", 0)
    plain = fm.parse_args(["--kd", "--out", str(tmp_path)])
    assert fm.kinds(plain) == ("teacher", "vanilla", "red", "kd")
    ov = fm.protocol_overrides(plain, "kd", 2)
    assert "distill.method=kd" in ov and f"model.teacher_checkpoint={tmp_path / 'teacher_s2'}" in ov
    assert fm.CONFIG_FILES["kd"] == "student_vanilla.yaml"  # no RED blocks
    assert not any(o.startswith("model.student") for o in fm.protocol_overrides(args, "teacher", 0))
    # A teacher directory without a finished run is one clear error before anything trains.
    from redistill.errors import UserError

    with pytest.raises(UserError, match="no finished run"):
        fm.shared_teacher(tmp_path / "t")

    # --teachers: the teacher_s<seed> runs of an earlier call's folder, one per seed.
    per_seed = fm.parse_args(["--teachers", str(tmp_path / "old"), "--out", str(tmp_path)])
    assert fm.teacher_dir(per_seed, 2) == tmp_path / "old" / "teacher_s2"
    assert f"model.teacher_checkpoint={tmp_path / 'old' / 'teacher_s1'}" in fm.protocol_overrides(per_seed, "red", 1)
    with pytest.raises(UserError, match="--teachers .*teacher_s0: no finished run"):
        fm.shared_teacher(fm.teacher_dir(per_seed, 0), "--teachers")
    with pytest.raises(SystemExit):
        fm.parse_args(["--teacher", "a", "--teachers", "b"])


def test_student_plus_and_teacher_model_overrides(fm, tmp_path):
    from redistill.train import load_config

    teacher, student = "cifar_resnet20:strides=1,2,2,2", "cifar_resnet20:strides=4,1,2,1"
    args = fm.parse_args(["--student-plus", "--kd", "--teacher-model", teacher, "--student", student,
                          "--red-weights", "1", "1", "--out", str(tmp_path), "distill.options.alpha=50"])
    assert fm.kinds(args) == ("teacher", "vanilla", "red", "student_plus", "kd")
    cfgs = {k: load_config(fm.REPO / "configs" / "fashion_mnist" / fm.CONFIG_FILES[k], fm.protocol_overrides(args, k, 1))
            for k in fm.kinds(args)}
    assert cfgs["teacher"].model.student == teacher and cfgs["teacher"].distill.method is None
    for kind in ("red", "student_plus", "kd"):  # the distilled runs rebuild that teacher, not the configs' one
        assert cfgs[kind].model.teacher == teacher and cfgs[kind].model.student == student
        assert cfgs[kind].model.teacher_checkpoint == str(tmp_path / "teacher_s1")
    plus, red = cfgs["student_plus"].distill, cfgs["red"].distill
    assert plus.method == red.method == "red" and plus.pairs == red.pairs == "auto"  # the same RED blocks
    assert plus.options["alpha"] == 0 and red.options["alpha"] == 50  # an override of the call cannot reach student+
    assert plus.options["w_task"] == red.options["w_task"] == 1.0 and plus.options["w_distill"] == 1.0
    assert fm.weights_suffix(args, "student_plus") == "_w1-1" and fm.weights_suffix(args, "kd") == ""
    assert cfgs["vanilla"].model.teacher is None and cfgs["vanilla"].distill.method is None
    from redistill.errors import UserError

    fm.check_student_plus({"pairs": [{"alpha": 0.0}, {"alpha": 0.0}]}, "student_plus_s0")
    with pytest.raises(UserError, match="student_plus_s0: student\\+ needs RED pairs with alpha 0"):
        fm.check_student_plus({"pairs": [{"alpha": 0.0}, {"alpha": 10.0}]}, "student_plus_s0")


def test_paired_differences_with_student_plus(fm, tmp_path):
    accs = {"teacher": [93.0, 93.4, 92.6], "vanilla": [90.0, 90.2, 89.8], "red": [91.0, 91.6, 90.8],
            "student_plus": [90.5, 91.4, 90.9]}
    summaries = {f"{k}_s{s}": _summary(k, a, a) for k, v in accs.items() for s, a in enumerate(v)}
    args = fm.parse_args(["--results", str(tmp_path), "--student-plus", "--tag", "plus"])
    agg = fm.aggregate(summaries, args.seeds, fm.kinds(args))
    d = agg["differences"]
    assert d["RED - vanilla"]["per_seed"] == pytest.approx([1.0, 1.4, 1.0])
    assert d["RED - vanilla"]["mean"] == pytest.approx(3.4 / 3) and d["RED - vanilla"]["beyond_spread"]
    assert d["RED - student+"]["per_seed"] == pytest.approx([0.5, 0.2, -0.1])
    assert d["RED - student+"]["std"] == pytest.approx(0.3) and not d["RED - student+"]["beyond_spread"]
    assert d["student+ - vanilla"]["mean"] == pytest.approx(2.8 / 3)
    assert agg["gap_recovered_by_group"]["student_plus"] == pytest.approx((90.933333 - 90.0) / 3.0, rel=1e-4)
    js, md, _ = fm.write_results(args, agg, summaries, 1.0, None)
    text = md.read_text()
    assert "RED - vanilla **+1.13 ± 0.23** (per seed +1.00, +1.40, +1.00)" in text
    assert "RED - student+ **+0.20 ± 0.30** (per seed +0.50, +0.20, -0.10)" in text
    assert "by more than the seeds' spread (mean difference > its std): **no**" in text
    assert "| student_plus | cifar_resnet20 [4,1,1,1] |" in text and "student+ [90.5, 91.4, 90.9]" in text
    assert json.loads(js.read_text())["differences"]["RED - student+"]["mean"] == pytest.approx(0.2)
    assert fm.aggregate(summaries, args.seeds)["differences"] == {}  # no student+ group: none reported


def test_aggregate_and_results(fm, tmp_path):
    accs = {"teacher": [93.0, 93.4, 92.6], "vanilla": [90.0, 90.2, 89.8], "red": [91.6, 91.9, 91.3]}
    summaries = {f"{k}_s{s}": _summary(k, a, a + 0.1) for k, v in accs.items() for s, a in enumerate(v)}
    agg = fm.aggregate(summaries, [0, 1, 2])
    assert agg["groups"]["teacher"]["test_acc_mean"] == pytest.approx(93.0)
    assert agg["groups"]["red"]["test_acc_std"] == pytest.approx(0.3)
    assert agg["gap_recovered"] == pytest.approx((91.6 - 90.0) / (93.0 - 90.0))
    assert agg["gap_recovered_per_seed"][1] == pytest.approx((91.9 - 90.2) / (93.4 - 90.2))
    assert agg["peak_reduction_live"] == pytest.approx(4.0)

    args = fm.parse_args(["--results", str(tmp_path)])
    selection = {"seed": 0, "alphas": [1.0, 10.0], "chosen": 10.0, "val_acc": {"1": 91.0, "10": 91.7}}
    js, md, png = fm.write_results(args, agg, summaries, 60.0, selection)
    text = md.read_text()
    assert "**53%**" in text and "target >= 50%: met" in text
    assert "x4.00 (live)" in text and "**10**" in text
    assert "| red | cifar_resnet20 [4,1,1,1] | 91.60 ± 0.30 |" in text
    data = json.loads(js.read_text())
    assert data["alpha_selection"]["chosen"] == 10.0 and len(data["runs"]) == 9
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_aggregate_shared_teacher_and_red_kd(fm, tmp_path):
    accs = {"vanilla": [90.0, 90.4, 89.6], "red": [91.0, 91.2, 90.8], "red_kd": [92.0, 91.8, 92.2]}
    summaries = {f"{k}_s{s}": _summary(k, a, a + 0.1) for k, v in accs.items() for s, a in enumerate(v)}
    teacher = _summary("teacher", 94.0, 94.2)
    summaries.update({f"teacher_s{s}": teacher for s in range(3)})
    agg = fm.aggregate(summaries, [0, 1, 2], ("teacher", "vanilla", "red", "red_kd"), shared_teacher=True)
    assert agg["groups"]["teacher"]["test_acc"] == [94.0]  # one run, counted once
    assert agg["gap_recovered"] == pytest.approx(0.25)
    assert agg["gap_recovered_by_group"]["red_kd"] == pytest.approx(0.5)
    args = fm.parse_args(["--results", str(tmp_path), "--teacher", str(tmp_path / "t"), "--red-kd"])
    _, md, _ = fm.write_results(args, agg, summaries, 60.0, None)
    text = md.read_text()
    assert "**25%**; target >= 50%: NOT met" in text and "RED + KD (Hinton KD" in text and "**50%**" in text
    assert "is distilled by every seed" in text and "| red_kd |" in text
    assert "| teacher | cifar_resnet20 [1,1,2,2] | 94.00 |" in text  # one run: no spread shown


def test_kd_group_and_subset_in_results(fm, tmp_path):
    accs = {"vanilla": [90.0, 90.4, 89.6], "red": [89.0, 89.2, 88.8], "kd": [91.0, 91.2, 90.8]}
    summaries = {f"{k}_s{s}": _summary(k, a, a + 0.1) for k, v in accs.items() for s, a in enumerate(v)}
    summaries.update({f"teacher_s{s}": _summary("teacher", 94.0 + s, 94.0) for s in range(3)})
    agg = fm.aggregate(summaries, [0, 1, 2], ("teacher", "vanilla", "red", "kd"))
    assert agg["gap_recovered"] == pytest.approx(-1 / 5) and agg["gap_recovered_by_group"]["kd"] == pytest.approx(0.2)
    args = fm.parse_args(["--results", str(tmp_path), "--kd", "--subset", "5000"])
    _, md, _ = fm.write_results(args, agg, summaries, 60.0, None)
    text = md.read_text()
    assert "a 5,000-image subset of the training split" in text and "54,000" not in text
    assert "KD alone" in text and "**20%**" in text and "| kd |" in text and "KD [91.0, 91.2, 90.8]" in text
    assert "learn from teacher seed s" in text and "translated" not in text and "also takes" not in text
    assert "--red-weights" not in text
    args = fm.parse_args(["--results", str(tmp_path), "--red-weights", "1", "0.5", "--tag", "w"])
    _, md, _ = fm.write_results(args, agg, summaries, 60.0, None)
    assert "RED loss weights (--red-weights): w_task 1, w_distill 0.5 (the configs' 0.5 / 0.5 replaced)." \
        in md.read_text()
    args = fm.parse_args(["--results", str(tmp_path), "--kd", "--tag", "c48", "data.canvas=48",
                          "data.augment.mixup_alpha=0.2"])
    assert all("data.canvas=48" in fm.protocol_overrides(args, k, 0) for k in fm.kinds(args))
    _, md, _ = fm.write_results(args, agg, summaries, 60.0, None)
    assert md.name == "fashion_mnist_c48.md"
    text = md.read_text()
    assert "translated: every image at a fixed random place on a blank 48 x 48 square" in text
    assert "Every run also takes `data.augment.mixup_alpha=0.2`." in text


@pytest.fixture(scope="module")
def variants(load_benchmark):
    return load_benchmark("fashion_mnist_variants.py")


def test_variants_overrides_load_as_configs(variants, tmp_path):
    from redistill.train import load_config

    args = argparse.Namespace(device="cpu", data_root="/d", teacher=tmp_path / "best.pt")
    configs = SCRIPT.parents[1] / "configs" / "fashion_mnist"
    for name, (config, _, base, _) in variants.VARIANTS.items():
        cfg = load_config(configs / f"{config}.yaml", variants.overrides(args, name))
        assert cfg.data.root == "/d" and cfg.data.val_subset is None and cfg.run.device == "cpu"
        distils = cfg.distill.method is not None
        assert distils == (name != base)  # every vanilla run is its own baseline, every other one distils
        assert (cfg.model.teacher_checkpoint == str(tmp_path / "best.pt")) == distils
    cfgs = {n: load_config(configs / f"{c}.yaml", variants.overrides(args, n)) for n, (c, *_ ) in variants.VARIANTS.items()}
    assert cfgs["r50"].distill.options["alpha"] == 50 and cfgs["kd"].distill.method == "kd"
    assert cfgs["rx2"].model.student == cfgs["vx2"].model.student == variants.X2


def test_variants_results_table(variants, tmp_path):
    summaries = {}
    for i, name in enumerate(variants.VARIANTS):
        summaries[name] = {"val_acc": 80.0 + i, "test_acc": 79.0 + i, "peak_bytes_live": 37_632,
                           "params": 272_186, "train_time_s": 1.0}
    summaries["r10"]["val_acc"] = 85.0  # vanilla "v" has 80.0, teacher 90.0: half the gap
    args = argparse.Namespace(results=tmp_path, teacher=tmp_path / "best.pt", argv=["--teacher", "x"])
    variants.write_results(args, summaries, {"val_acc": 90.0, "test_acc": 89.5}, 1.0)
    text = (tmp_path / "fashion_mnist_variants.md").read_text()
    assert "| r10 | x4, RED alpha 10 | 85.00 | 50% | 36.8 | 272.19K |" in text
    assert "| v | x4, vanilla | 80.00 | (baseline) |" in text
    data = json.loads((tmp_path / "fashion_mnist_variants.json").read_text())
    assert len(data["rows"]) == len(variants.VARIANTS)
    assert (tmp_path / "fashion_mnist_variants.png").read_bytes()[:4] == b"\x89PNG"


def test_red_loss_trend_reads_first_and_last_epoch(fm, tmp_path):
    for seed, (first, last) in enumerate([(0.03, 0.02), (0.05, 0.01)]):
        run = tmp_path / f"red_s{seed}"
        run.mkdir()
        epochs = [{"epoch": 1, "train/red/conv1": first, "train/ce": 1.0},
                  {"epoch": 2, "train/red/conv1": (first + last) / 2},
                  {"epoch": 3, "train/red/conv1": last, "val/acc": 80.0}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    trend = fm.red_loss_trend([{"run_dir": str(tmp_path / f"red_s{s}")} for s in (0, 1)] + [{"run_dir": None}])
    assert trend.keys() == {"red/conv1"}
    assert trend["red/conv1"] == pytest.approx((0.04, 0.015))


def test_merge_takes_finished_seeds_from_an_earlier_results_file(fm, tmp_path, monkeypatch, capsys):
    """--merge: the seeds an earlier call finished come from its results file (no run folders here, RED
    terms included), only the others are trained, and a file of another protocol is refused."""
    accs = {"teacher": [93.0, 93.4, 92.6], "vanilla": [90.0, 90.2, 89.8], "red": [91.0, 91.6, 90.8]}
    summaries = {f"{k}_s{s}": _summary(k, a, a) for k, v in accs.items() for s, a in enumerate(v)}
    for s in range(3):
        summaries[f"red_s{s}"]["red_terms"] = {"red/conv1": [0.04 + s, 0.02]}
    first = tmp_path / "first"
    argv = ["--results", str(first), "--tag", "m", "--subset", "500"]
    args = fm.parse_args([*argv, "--seeds", "0", "1"])
    two = {k: v for k, v in summaries.items() if not k.endswith("_s2")}
    js, _, _ = fm.write_results(args, fm.aggregate(two, [0, 1]), two, 120.0, None)

    asked = []

    def fake_protocol(run_args):  # trains nothing: hands back seed 2's runs
        asked.append(list(run_args.seeds))
        return {k: v for k, v in summaries.items() if k.endswith("_s2")}, None

    monkeypatch.setattr(fm, "run_protocol", fake_protocol)
    second = tmp_path / "second"
    assert fm.main(["--results", str(second), "--tag", "m", "--subset", "500", "--merge", str(js)]) == 0
    assert asked == [[2]]
    data = json.loads((second / "fashion_mnist_m.json").read_text())
    assert data["groups"]["red"]["test_acc"] == [91.0, 91.6, 90.8]
    assert data["settings"]["merged"] == {"file": str(js), "seeds": [0, 1], "wall_s": 120.0}
    text = (second / "fashion_mnist_m.md").read_text()
    assert "Seed(s) 0, 1 come from an earlier call of the same protocol" in text
    assert "red/conv1 1.0400 -> 0.0200" in text  # (0.04 + 1.04 + 2.04) / 3: every seed's terms, from the files
    asked.clear()  # every seed already in the file: nothing is trained
    assert fm.main(["--results", str(second), "--tag", "m", "--subset", "500", "--seeds", "0", "1",
                    "--merge", str(js)]) == 0 and asked == []

    capsys.readouterr()
    assert fm.main(["--results", str(second), "--tag", "m", "--subset", "600", "--merge", str(js)]) == 2
    err = capsys.readouterr().err
    assert "--merge" in err and "subset = 500, this call 600" in err and "\n" not in err.strip()
    assert fm.main(["--results", str(second), "--tag", "m", "--merge", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert fm.main(["--results", str(second), "--tag", "m", "--merge", str(tmp_path / "bad.json")]) == 2
    assert "not a results file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fm.parse_args(["--merge", str(js), "--alphas", "1", "10"])
    assert asked == []


@pytest.mark.slow
def test_protocol_end_to_end_on_tiny_synthetic_runs(tmp_path):
    """Teachers per seed, an alpha sweep on validation, RED + KD; then a shared teacher reused."""
    import yaml

    from test_demo import _write_configs

    def run(argv: list[str]) -> str:  # a real process: the worker pool spawns and imports the script
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    cdir = _write_configs(tmp_path)
    common = ["--configs", str(cdir), "--device", "cpu", "--seeds", "0", "1", "--teacher-epochs", "1",
              "--student-epochs", "1", "--batch-size", "32", "--jobs", "2", "--workers", "0"]
    out, res = tmp_path / "runs", tmp_path / "results"
    log = run([*common, "--alphas", "1", "10", "--red-kd", "--kd", "--out", str(out), "--results", str(res)])
    for seed in (0, 1):  # each KD run is submitted once (the sweep's end calls distill() for seed 1 again)
        assert [line.split()[1] for line in log.splitlines() if line.startswith(f"kd_s{seed}: ")] == ["trained"]
    data = json.loads((res / "fashion_mnist.json").read_text())
    chosen = data["alpha_selection"]["chosen"]
    a = f"{chosen:g}"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "teacher_s0", "teacher_s1", "vanilla_s0", "vanilla_s1", "red_a1_s0", "red_a10_s0",
        f"red_kd_a{a}_s0", f"red_a{a}_s1", f"red_kd_a{a}_s1", "kd_s0", "kd_s1"])  # the sweep ran on seed 0 only
    assert chosen in (1.0, 10.0) and set(data["groups"]) == {"teacher", "vanilla", "red", "red_kd", "kd"}
    for seed in (0, 1):  # KD alone: teacher s, no alpha, no RED blocks
        cfg = yaml.safe_load((out / f"kd_s{seed}" / "config.yaml").read_text())
        assert cfg["model"]["teacher_checkpoint"] == str(out / f"teacher_s{seed}")
        assert cfg["distill"]["method"] == "kd" and "alpha" not in cfg["distill"]["options"]
        assert data["runs"][f"kd_s{seed}"]["params"] == data["runs"][f"vanilla_s{seed}"]["params"]
    assert "KD alone" in (res / "fashion_mnist.md").read_text()
    for seed in (0, 1):  # every distilled run of seed s used teacher s and the chosen alpha
        for kind in ("red", "red_kd"):
            cfg = yaml.safe_load((out / f"{kind}_a{chosen:g}_s{seed}" / "config.yaml").read_text())
            assert cfg["model"]["teacher_checkpoint"] == str(out / f"teacher_s{seed}")
            assert cfg["distill"]["options"]["alpha"] == chosen
            assert cfg["distill"]["method"] == kind
    assert len(data["groups"]["teacher"]["test_acc"]) == 2

    # One shared, finished teacher: nothing is trained for it, every seed distils from it.
    shared = tmp_path / "shared"
    run([*common, "--teacher", str(out / "teacher_s0"), "--out", str(shared), "--results", str(res), "--tag", "shared"])
    assert sorted(p.name for p in shared.iterdir()) == ["red_s0", "red_s1", "vanilla_s0", "vanilla_s1"]
    cfg = yaml.safe_load((shared / "red_s1" / "config.yaml").read_text())
    assert cfg["model"]["teacher_checkpoint"] == str(out / "teacher_s0")
    text = (res / "fashion_mnist_shared.md").read_text()
    assert "is distilled by every seed" in text and "RED loss terms" in text
    assert len(json.loads((res / "fashion_mnist_shared.json").read_text())["groups"]["teacher"]["test_acc"]) == 1

    # The first call's teachers again, seed by seed, for new students: no teacher is trained.
    per_seed = tmp_path / "per_seed"
    run([*common, "--teachers", str(out), "--out", str(per_seed), "--results", str(res), "--tag", "per_seed"])
    assert sorted(p.name for p in per_seed.iterdir()) == ["red_s0", "red_s1", "vanilla_s0", "vanilla_s1"]
    for seed in (0, 1):
        cfg = yaml.safe_load((per_seed / f"red_s{seed}" / "config.yaml").read_text())
        assert cfg["model"]["teacher_checkpoint"] == str(out / f"teacher_s{seed}")
    assert "not trained in this call" in (res / "fashion_mnist_per_seed.md").read_text()

    # A third seed for the shared-teacher call, its first two merged from the results file alone.
    more = tmp_path / "more"
    log = run([*common[:4], *common[7:], "--teacher", str(out / "teacher_s0"), "--out", str(more),
               "--results", str(res), "--tag", "shared", "--seeds", "0", "1", "2",
               "--merge", str(res / "fashion_mnist_shared.json")])
    assert sorted(p.name for p in more.iterdir()) == ["red_s2", "vanilla_s2"] and "seed(s) [0, 1] taken" in log
    assert len(json.loads((res / "fashion_mnist_shared.json").read_text())["groups"]["red"]["test_acc"]) == 3


def test_the_demo_configs_are_the_protocol_they_cite_cut_short(fm, tmp_path):
    """configs/demo/ is the benchmarked protocol's seed 0 with fewer epochs and a smaller validation subset
    (the demo report says so); nothing else differs."""
    from redistill.demo import PROTOCOL_RESULTS, STAGES
    from redistill.train import load_config
    from redistill.train.config import config_differences

    recorded = json.loads((fm.REPO / PROTOCOL_RESULTS).with_suffix(".json").read_text())["settings"]
    args = fm.parse_args(recorded["argv"] + ["--out", str(tmp_path)])
    assert 0 in args.seeds
    for kind, fname, _ in STAGES:
        protocol = load_config(args.configs / fm.CONFIG_FILES[kind], fm.protocol_overrides(args, kind, 0))
        demo = load_config(fm.REPO / "configs" / "demo" / fname)
        diffs = config_differences(demo.to_dict(), protocol.to_dict())
        assert [d for d in diffs if not d.startswith("model.teacher_checkpoint")] == [
            "data.val_subset: None -> 2000", "run.epochs: 30 -> 20"], kind
