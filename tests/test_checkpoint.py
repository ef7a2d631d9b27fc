"""ddpm_lib.checkpoint: atomic writes, weights_only loading, and one clear error per bad file."""

import os
import pickle

import pytest
import torch
from torch import nn

from ddpm_lib.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint


def payload():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "config": {"lr": 1e-3, "dims": [2, 4], "name": None},
        "rng": {"torch": torch.get_rng_state()},
    }


def test_round_trip_with_weights_only(tmp_path):
    original = payload()
    path = save_checkpoint(original, tmp_path / "sub" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == original["config"]
    for key, value in original["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["format"] == "ddpm_lib.checkpoint" and loaded["version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(payload(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a ddpm_lib checkpoint"):
        load_checkpoint(plain)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_never_runs_code_from_the_file(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "ddpm_lib.checkpoint", "version": 1, "x": Evil()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_other_architecture_is_one_clear_error(tmp_path):
    state = nn.Linear(3, 2).state_dict()
    with pytest.raises(CheckpointError, match="another architecture"):
        load_state(nn.Linear(4, 2), state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_state(nn.Sequential(nn.Linear(3, 2)), state, tmp_path / "last.pt")


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "ddpm_lib.checkpoint", "version": 99}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
