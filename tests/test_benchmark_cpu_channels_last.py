"""benchmarks/cpu_channels_last.py: both memory formats train the same function, and the results files."""

from __future__ import annotations

import json
import time

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("cpu_channels_last.py")


@pytest.mark.parametrize("case", [
    # Width 16: strided 1x1 shortcuts read >= 16 channels, clear of oneDNN's channels-last bug.
    ("plain", "cifar_resnet8:width=16", None, (3, 16, 16), 8, {}),
    ("RED", "cifar_resnet8:width=16", "cifar_resnet8:width=16:strides=4,1,1,1", (3, 16, 16), 8, {}),
])
def test_both_formats_compute_the_same_loss_after_an_update(bench, case):
    row = bench.measure(case, rounds=2, steps=1, warmup=0, clock=time.process_time)
    assert min(row["losses"]["nchw"]) > 0 and set(row["losses"]) == {"nchw", "channels_last", "float64"}
    assert abs(row["losses"]["nchw"][1] - row["losses"]["channels_last"][1]) < 1e-5 * row["losses"]["nchw"][1]
    assert all(e < 1e-5 for e in row["loss_rel_error"].values())
    assert len(row["median_step_s"]) == 2 and row["speedup"] > 0


def test_results_files(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CASES", (("tiny", "cifar_resnet8:width=16", None, (3, 8, 8), 4, {}),))
    assert bench.main(["--rounds", "1", "--steps", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cpu_channels_last.json").read_text())
    assert [r["case"] for r in data["rows"]] == ["tiny"]
    assert "| tiny | 4 |" in (tmp_path / "cpu_channels_last.md").read_text()
    bn = data["batchnorm_error"]
    assert set(bn) == {"0", "10"} and all(0 < e < 1e-2 for v in bn.values() for e in v.values())


def test_a_model_hitting_the_onednn_bug_is_refused(bench):
    with pytest.raises(ValueError, match="layer2.0.downsample.0 .*NCHW"):
        bench.make_step(("narrow", "cifar_resnet8:width=4", None, (3, 16, 16), 8, {}), torch.channels_last)
