"""Checkpoints: atomic writes, safe loads, clear errors, RNG state round trips."""

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from redistill.errors import UserError
from redistill.checkpoint import load_checkpoint, load_weights, rng_state, save_checkpoint, set_rng_state


def test_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 3, "model": {"w": torch.arange(4.0)}, "best_val": 12.5})
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and state["best_val"] == 12.5
    assert torch.equal(state["model"]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_overwrite_replaces_whole_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2


def test_truncated_file_is_a_user_error_naming_it(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match=f"{path}.*corrupt"):
        load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UserError, match="not a redistill checkpoint"):
        load_checkpoint(other)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:  # an arbitrary object: unpickling it would run code of the file's choosing
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "redistill-checkpoint", "version": 1, "obj": _Payload()}, path)
    with pytest.raises(UserError, match="corrupt or not a redistill checkpoint"):
        load_checkpoint(path)


def test_load_weights_names_offending_keys():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight"] = torch.zeros(8, 1, 3, 3)
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    with pytest.raises(UserError) as err:
        load_weights(model, state, "ckpt.pt")
    msg = str(err.value)
    assert "ckpt.pt" in msg and "missing keys 1.bias" in msg and "unexpected keys 2.weight" in msg
    assert "0.weight (8, 1, 3, 3) vs (4, 1, 3, 3)" in msg
    good = {k: torch.full_like(v, 2) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    load_weights(model, good, "ckpt.pt")
    assert torch.all(model[0].weight == 2)


def test_rng_states_survive_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
