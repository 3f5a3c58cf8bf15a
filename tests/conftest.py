"""Shared test settings."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors: intra-op threads only add contention (10-100x slower on a busy
    2-core machine). Subprocesses a test starts set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_benchmark():
    """A loader of the scripts in benchmarks/ (not a package): ``load_benchmark("compare.py")``."""
    loaded = []

    def load(filename: str):
        spec = importlib.util.spec_from_file_location(f"bench_{Path(filename).stem}", BENCHMARKS / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        loaded.append(spec.name)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


# Protocol-shaped run directories for the benchmark scripts that read them (deploy.py, patch.py).
def _tiny_run_config(strides: list[int]) -> dict:
    return {"model": {"student": "cifar_resnet8", "options": {"width": 4, "strides": strides}},
            "data": {"name": "synthetic", "workers": 0, "batch_size": 16,
                     "synthetic": {"train_size": 64, "test_size": 32, "image_size": 16}},
            "run": {"epochs": 1, "progress": False, "device": "cpu"}}


@pytest.fixture(scope="session")
def tiny_protocol_runs(tmp_path_factory):
    """teacher_s0 / vanilla_s0 / red_s0: strides 1,1,2,2, and two x4 students 4,1,1,1 (the last with RED)."""
    from redistill.train import run_training

    root = tmp_path_factory.mktemp("runs")
    run_training(_tiny_run_config([1, 1, 2, 2]), root / "teacher_s0")
    run_training(_tiny_run_config([4, 1, 1, 1]), root / "vanilla_s0")
    red = _tiny_run_config([4, 1, 1, 1])
    red["model"]["teacher_checkpoint"] = str(root / "teacher_s0")
    red["distill"] = {"method": "red", "pairs": "auto", "options": {"alpha": 1.0}}
    run_training(red, root / "red_s0")
    (root / "unrelated").mkdir()
    return root
