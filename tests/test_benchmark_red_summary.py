"""benchmarks/red_summary.py: one row per fashion_mnist.py results file, the gap shares and the target count."""

from __future__ import annotations

import json

import pytest

from test_benchmark_fashion_mnist import _summary


@pytest.fixture(scope="module")
def fm(load_benchmark):
    return load_benchmark("fashion_mnist.py")


@pytest.fixture(scope="module")
def rs(load_benchmark):
    return load_benchmark("red_summary.py")


def _protocol_file(fm, results, argv: list[str], accs: dict[str, list[float]]) -> None:
    """A results file as fashion_mnist.py writes it, from made-up per-seed accuracies."""
    summaries = {f"{k}_s{s}": _summary(k, a, a) for k, v in accs.items() for s, a in enumerate(v)}
    args = fm.parse_args(["--results", str(results), *argv])
    fm.write_results(args, fm.aggregate(summaries, args.seeds, fm.kinds(args)), summaries, 1.0, None)


def test_rows_gap_shares_and_target(fm, rs, tmp_path):
    teacher = [94.0, 94.0, 94.0]
    _protocol_file(fm, tmp_path, ["--subset", "5000", "--tag", "5k", "--kd", "--red-weights", "1", "1",
                                  "data.canvas=48"],
                   {"teacher": teacher, "vanilla": [90.0] * 3, "red": [92.0, 92.4, 91.6], "kd": [90.4] * 3})
    _protocol_file(fm, tmp_path, ["--student-epochs", "10"],
                   {"teacher": teacher, "vanilla": [90.0] * 3, "red": [89.6] * 3})
    _protocol_file(fm, tmp_path, ["--quick"], {"teacher": teacher[:2], "vanilla": [90.0] * 2, "red": [93.0] * 2})
    (tmp_path / "fashion_mnist_variants.json").write_text(json.dumps({"rows": []}))  # another script's file

    assert rs.main(["--results", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "red_summary.json").read_text())["rows"]
    assert [r["file"] for r in rows] == ["fashion_mnist", "fashion_mnist_5k"]  # quick run and variants left out
    full, small = rows
    assert full["gap"]["red"] == pytest.approx(-0.1) and "kd" not in full["gap"]
    assert full["train images"] == "54,000" and full["change"] == "-"
    assert small["gap"]["red"] == pytest.approx(0.5) and small["gap"]["kd"] == pytest.approx(0.1)
    assert small["train images"] == "5,000" and small["epochs (teacher / student)"] == "20 / 20"
    assert small["change"] == "translated (48 x 48 canvas), RED loss 1 CE + 1 mean(alpha L)"
    assert small["command"].endswith("--red-weights 1 1 data.canvas=48")
    text = (tmp_path / "red_summary.md").read_text()
    assert "| `fashion_mnist_5k` | cifar_resnet20 [4,1,1,1] | 5,000 |" in text
    assert "**50%** (50%, 60%, 40%) | 10% | - |" in text
    assert "meets the >= 50% target in 1 of 2 settings: fashion_mnist_5k." in text
    assert "(1 settings, 1 distinct sets of KD runs" in text and "it recovers more than RED in 0." in text
    assert (tmp_path / "red_summary.png").read_bytes()[:4] == b"\x89PNG"


def test_student_plus_columns_only_with_student_plus_files(fm, rs, tmp_path):
    teacher = [94.0, 94.0, 94.0]
    _protocol_file(fm, tmp_path, ["--tag", "old"], {"teacher": teacher, "vanilla": [90.0] * 3, "red": [91.0] * 3})
    assert rs.main(["--results", str(tmp_path)]) == 0
    assert "student+" not in (tmp_path / "red_summary.md").read_text()  # no student+ run: no such columns

    _protocol_file(fm, tmp_path, ["--tag", "56", "--student-plus", "--teacher-model", "cifar_resnet20:strides=1,2,2,2"],
                   {"teacher": teacher, "vanilla": [90.0, 90.4, 89.6], "red": [92.0, 92.4, 91.6],
                    "student_plus": [91.0, 91.0, 91.0]})
    assert rs.main(["--results", str(tmp_path)]) == 0
    rows = {r["file"]: r for r in json.loads((tmp_path / "red_summary.json").read_text())["rows"]}
    new = rows["fashion_mnist_56"]
    assert new["differences"]["RED - student+"]["per_seed"] == pytest.approx([1.0, 1.4, 0.6])
    assert new["change"] == "teacher `cifar_resnet20:strides=1,2,2,2`" and rows["fashion_mnist_old"]["differences"] == {}
    text = (tmp_path / "red_summary.md").read_text()
    assert "| RED + KD gap share | student+ | RED - vanilla | RED - student+ | student+ - vanilla |" in text
    assert "| 91.00 ± 0.00 | +2.00 ± 0.00 | +1.00 ± 0.40 | +1.00 ± 0.40 |" in text  # the student+ file's row
    assert "| - | - | - | - | - |" in text  # the older file's row: dashes in the new columns
    assert "RED beats both vanilla and student+ by more than the seeds' spread in 1: fashion_mnist_56." in text


def test_a_file_from_an_older_script_is_one_clear_error(rs, tmp_path, capsys):
    old = {"settings": {"quick": False, "seeds": [0], "overrides": []}, "groups": {}, "gap_recovered": None}
    (tmp_path / "fashion_mnist_old.json").write_text(json.dumps(old))
    assert rs.main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fashion_mnist_old.json lacks subset, red_weights, argv" in err
    assert "rerun the command" in err and not (tmp_path / "red_summary.md").exists()


def test_a_one_seed_file_shows_no_spread(fm, rs, tmp_path):
    _protocol_file(fm, tmp_path, ["--tag", "one", "--seeds", "0", "--student-plus"],
                   {"teacher": [94.0], "vanilla": [90.0], "red": [91.5], "student_plus": [90.5]})
    assert "RED - vanilla **+1.50** (per seed +1.50)" in (tmp_path / "fashion_mnist_one.md").read_text()
    assert rs.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "red_summary.md").read_text()
    assert "| 1 | 94.00 | 90.00 | 91.50 |" in text and "| 90.50 | +1.50 (1 seed) | +1.00 (1 seed) | +0.50 (1 seed) |" in text
    assert "±" not in text.split("| `fashion_mnist_one` |")[1].split("\n")[0]
