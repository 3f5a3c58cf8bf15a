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
