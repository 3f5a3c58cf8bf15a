"""benchmarks/compare.py: every method gets the same recipe; aggregation and report."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare.py")


def test_every_method_shares_teacher_student_recipe_and_seeds(compare, tmp_path):
    args = compare.parse_args(["--seeds", "2", "--runs", str(tmp_path)])
    proto, teacher, runs = compare.plan(args)
    assert len(runs) == 2 * len(compare.ALL_METHODS)
    strip = lambda cfg: {k: v for k, v in cfg.items() if k != "distill"}  # noqa: E731
    by_seed = {}
    for method, seed, cfg, run_dir in runs:
        assert cfg["run"]["seed"] == seed and run_dir == tmp_path / method / f"seed{seed}"
        assert cfg["model"]["student"] == proto.student
        if method != "vanilla":
            assert cfg["model"]["teacher_checkpoint"] == str(teacher["dir"] / "best.pt")
            assert cfg["distill"]["method"] == compare.EXTRA_ARMS.get(method, method) and cfg["distill"]["pairs"] is None
        if method == "student_plus":  # RED's blocks and loss weights, no distillation weight
            assert cfg["distill"]["method"] == "red" and cfg["distill"]["options"] == {**proto.red, "alpha": 0.0}
        shared = strip(cfg)
        shared["model"] = {"student": shared["model"]["student"]}
        by_seed.setdefault(seed, []).append(shared)
    for configs in by_seed.values():
        assert all(c == configs[0] for c in configs)  # only the distill section differs
    # seed-major order: a run cut short has every method on seed 0 first
    assert [s for _, s, _, _ in runs[: len(compare.ALL_METHODS)]] == [0] * len(compare.ALL_METHODS)


def test_unknown_method_is_a_user_error(compare):
    from redistill.errors import UserError

    with pytest.raises(UserError, match="did you mean"):
        compare.parse_args(["--methods", "vanila,kd"])


def test_aggregate_ranks_and_judges(compare):
    def run(method, seed, acc, time_s=10.0):
        return {"bench_method": method, "seed": seed, "test_acc": acc, "train_time_s": time_s,
                "peak_bytes_live": 37632, "peak_bytes_layer": 37632, "params": 1, "flops": 2}

    summaries = [run("vanilla", 0, 80.0), run("vanilla", 1, 82.0), run("kd", 0, 84.0, 20.0),
                 run("kd", 1, 86.0, 20.0), run("red", 0, 83.0), run("red", 1, 85.0),
                 run("red_kd", 0, 84.0), run("red_kd", 1, 84.5)]
    teacher = {"test_acc": 91.0, "peak_bytes_live": 150528}
    result = compare.aggregate(teacher, summaries, ["vanilla", "kd", "red", "red_kd"])
    rows = {r["method"]: r for r in result["methods"]}
    assert rows["kd"]["acc_mean"] == 85.0 and rows["kd"]["acc_std"] == pytest.approx(2**0.5)
    assert rows["kd"]["time_ratio"] == 2.0 and rows["vanilla"]["rank"] == 4
    v = result["verdict"]
    assert v["best"] == "kd" and v["red_rank"] == 3
    assert v["red_within_1std_of_best"] is True  # 85 - 84 <= 1.41
    assert v["red_kd_ge_red"] is True
    assert v["red_gap_recovered"] == pytest.approx((84 - 81) / (91 - 81))
    assert "red_minus_student_plus" not in v  # no student+ arm

    summaries += [run("student_plus", 0, 83.5), run("student_plus", 1, 84.0)]
    result = compare.aggregate(teacher, summaries, ["vanilla", "kd", "red", "student_plus", "red_kd"])
    d = result["verdict"]["red_minus_student_plus"]
    assert d["per_seed"] == pytest.approx([-0.5, 1.0]) and d["mean"] == pytest.approx(0.25)
    assert d["std"] == pytest.approx(1.5 / 2**0.5)
