"""benchmarks/diffusion.py: aggregation over sampling seeds, the verdict and the files it writes."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bd(load_benchmark):
    return load_benchmark("diffusion.py")


def _summary(peak_live: int, peak_layer: int, pairs: int = 0) -> dict:
    return {"model": "m", "pairs": [{}] * pairs, "test_loss": 0.1, "peak_bytes_live": peak_live,
            "peak_bytes_layer": peak_layer, "params": 10, "flops": 2_000_000, "train_time_s": 1.0}


def _scores(fids: list[float]) -> list[dict]:
    return [{"seed": s, "fid": f, "kid_mean": 0.01, "precision": 0.5, "recall": 0.4, "sample_s_per_image": 0.1}
            for s, f in enumerate(fids)]


@pytest.mark.parametrize("red_fids, beyond", [([20.0, 21.0], True), ([29.0, 31.0], False)])
def test_verdict_and_files(bd, tmp_path, monkeypatch, red_fids, beyond):
    monkeypatch.setattr(bd, "RESULTS", tmp_path / "results")
    form = {**bd.FORMS["quick"], "seeds": [0, 1]}
    work = tmp_path / "work"
    for name, _ in bd.ARMS:
        (work / name / "samples_seed0").mkdir(parents=True)
        torch.save(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), work / name / "samples_seed0" / "samples.pt")
    summaries = {"teacher": _summary(4000, 4400), "vanilla": _summary(1000, 1000), "red": _summary(1000, 1000, 10),
                 "student_plus": _summary(1000, 1000, 10)}
    scores = {"teacher": _scores([10.0, 11.0]), "vanilla": _scores([30.0, 31.0]), "red": _scores(red_fids),
              "student_plus": _scores([24.0, 28.0])}
    rows = bd.aggregate(summaries, scores)
    assert rows[1]["fid"]["mean"] == 30.5 and rows[1]["fid"]["std"] == pytest.approx(0.7071, abs=1e-4)
    md = bd.write_results("quick", form, rows, work)
    data = json.loads((tmp_path / "results" / "diffusion_quick.json").read_text())
    verdict = data["verdict"]
    assert verdict["peak_reduction"] == {"live": 4.0, "layer": 4.4}
    assert verdict["student_peak_4x_below_teacher"] == {"live": True, "layer": True}
    assert verdict["red_beats_vanilla_beyond_seed_spread"] is beyond
    # student+ 26.0 +- 2.83: RED 20.5 is 5.5 below it (beyond the spread), RED 30.0 is not below it at all
    assert verdict["red_fid_below_student_plus_by"] == pytest.approx(26.0 - sum(red_fids) / 2)
    assert verdict["red_beats_student_plus_beyond_seed_spread"] is beyond
    assert verdict["student_plus_fid_below_vanilla_by"] == pytest.approx(4.5)
    text = md.read_text()
    assert "Pipeline check, not a result" in text and "DDIM 20 steps" in text
    assert "| teacher | vanilla x2 | RED x2 | student+ x2 |" in text and "RED FID - student+ FID" in text
    for name in ("diffusion_quick_fid_vs_memory.png", "diffusion_quick_samples_red.png"):
        assert (tmp_path / "results" / name).is_file()
