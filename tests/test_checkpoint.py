"""ddpm_lib.checkpoint, the one owner of the format: kinds and exact keys, atomic writes with fsync,
weights_only loading (a malicious file runs nothing), one clear error per bad file, version 1 upgrade."""

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_lib import checkpoint
from ddpm_lib.checkpoint import CheckpointError
from ddpm_lib.config import RunRecord, TrainConfig


def run_content() -> dict:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    ema = {"model": model.state_dict(), "decay": 0.999, "warmup": True, "num_updates": 1}
    return {
        "config": TrainConfig().to_dict(),
        "record": RunRecord(steps=3000, per_process_batch_size=128, effective_lr=1e-3).to_dict(),
        "step": 7,
        "model": model.state_dict(),
        "ema": ema,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": {"last_epoch": 7},
        "rng": {"generator": torch.Generator().get_state(), "torch": torch.get_rng_state()},
    }


def test_round_trip_of_each_kind(tmp_path):
    content = run_content()
    path = checkpoint.save(tmp_path / "sub" / "last.pt", "run", **content)
    loaded = checkpoint.load(path, "run")
    assert loaded["kind"] == "run" and loaded["version"] == checkpoint.VERSION and loaded["step"] == 7
    assert all(torch.equal(loaded["model"][k], v) for k, v in content["model"].items())
    denoiser = checkpoint.save(tmp_path / "d.pt", "denoiser", **checkpoint.denoiser_content(loaded))
    assert set(checkpoint.load(denoiser)) == {"format", "version", "kind", "config", "record", "step", "ema"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_saving_refuses_a_missing_or_an_unknown_key(tmp_path):
    content = run_content()
    with pytest.raises(CheckpointError, match="lacks the key.*'rng'"):
        checkpoint.save(tmp_path / "a.pt", "run", **{k: v for k, v in content.items() if k != "rng"})
    with pytest.raises(CheckpointError, match="unknown key.*'extra'"):
        checkpoint.save(tmp_path / "b.pt", "run", **content, extra=1)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p.pop("optimizer"), "lacks the key.*'optimizer'"),
        (lambda p: p.update(surprise=1), "unknown key.*'surprise'"),
        (lambda p: p["ema"].pop("decay"), "'ema' entry lacks the key.*'decay'"),
        (lambda p: p.update(kind="snapshot"), "unknown checkpoint kind 'snapshot'"),
        (lambda p: p.update(version=99), "version 99"),
        (lambda p: p.update(format="other"), "not a ddpm_lib checkpoint"),
    ],
)
def test_a_file_with_other_keys_is_one_clear_error_naming_the_key(tmp_path, change, message):
    payload = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "kind": "run", **run_content()}
    change(payload)
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_an_unknown_config_key_is_an_error_naming_it(tmp_path):
    content = run_content()
    content["config"]["learning_rate_typo"] = 3
    path = checkpoint.save(tmp_path / "last.pt", "run", **content)
    with pytest.raises(CheckpointError, match="unknown key.*'learning_rate_typo'"):
        checkpoint.load_denoiser(path)


def test_an_option_added_later_takes_its_default_and_an_unknown_one_is_refused(tmp_path):
    """A checkpoint written before an option existed still loads (no version bump per option)."""
    content = run_content()
    del content["config"]["label_dropout"], content["config"]["grid"]["guidance"], content["record"]["device"]
    path = checkpoint.save(tmp_path / "last.pt", "run", **content)
    from ddpm_lib.config import config_from_dict, record_from_dict

    config = config_from_dict(checkpoint.load(path)["config"])
    assert config.label_dropout == TrainConfig().label_dropout and config.grid.guidance == 0.0

    assert record_from_dict(checkpoint.load(path)["record"]).device == RunRecord().device
    content["record"]["world_sizes"] = 2
    path = checkpoint.save(tmp_path / "other.pt", "run", **content)
    with pytest.raises(Exception, match="unknown key.*'world_sizes'"):
        record_from_dict(checkpoint.load(path)["record"])


def test_the_wrong_kind_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "c.pt", "classifier", config={}, model={})
    with pytest.raises(
        CheckpointError, match="holds a 'classifier' checkpoint; expected 'run' or 'denoiser'"
    ):
        checkpoint.load_denoiser(path)


def test_every_write_is_fsynced_then_renamed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    checkpoint.write_json(tmp_path / "a.json", {"x": 1})
    assert len(synced) == 2  # the file, then its folder (so the rename survives a crash)


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    path = checkpoint.write_text(tmp_path / "last.json", "old")

    def broken(f):
        f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.write_atomic(path, broken)
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["last.json"]


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "nope.pt")
    path = checkpoint.save(tmp_path / "last.pt", "run", **run_content())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(text)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a ddpm_lib checkpoint"):
        checkpoint.load(plain)


def _evil_file(tmp_path: Path) -> tuple[Path, Path]:
    """A real torch.save file whose unpickling creates ``sentinel`` (a payload in a checkpoint's place)."""
    sentinel = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    path = tmp_path / "evil.pt"
    torch.save(
        {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "kind": "run", "x": Payload()}, path
    )
    return path, sentinel


def test_the_malicious_payload_is_live(tmp_path):
    """The control: loaded without weights_only, the file runs its code (so the next test means something)."""
    path, sentinel = _evil_file(tmp_path)
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_loading_never_runs_code_from_the_file(tmp_path):
    path, sentinel = _evil_file(tmp_path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)
    assert not sentinel.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    """Loading a file never runs code from it: each torch.load call in ddpm_lib says weights_only=True."""
    import ast

    package = Path(checkpoint.__file__).parent
    calls = []
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                if getattr(node.func.value, "id", None) == "torch":
                    keywords = {k.arg: k.value for k in node.keywords}
                    ok = (
                        isinstance(keywords.get("weights_only"), ast.Constant)
                        and keywords["weights_only"].value
                    )
                    calls.append((source.name, node.lineno, ok))
    assert calls and all(ok for _, _, ok in calls), [c for c in calls if not c[2]]


def test_other_architecture_is_one_clear_error(tmp_path):
    state = nn.Linear(3, 2).state_dict()
    with pytest.raises(CheckpointError, match="another architecture"):
        checkpoint.load_state(nn.Linear(4, 2), state, tmp_path / "last.pt")


def v3_config(bf16: bool) -> dict:
    """A config as ddpm_lib wrote it up to version 3: ``bf16`` where ``precision`` is now, no ``epochs``, and a grid
    without the options added since."""
    config = TrainConfig().to_dict()
    del config["precision"], config["epochs"]
    grid = {key: config["grid"][key] for key in ("sampler", "steps", "eta", "spacing", "clip", "guidance", "label",
                                                 "seed", "batch_size")}  # fmt: skip
    return {**config, "bf16": bf16, "grid": {**grid, "bf16": bf16}}


def test_a_version_1_run_checkpoint_is_upgraded(tmp_path):
    """ddpm_lib 0.1 wrote no kind, and the grid's sampler options flat in the config."""
    content = run_content()
    del content["record"], content["config"]
    config = {key: value for key, value in v3_config(True).items() if key != "grid"}
    config.update(sampler="ddpm", sampler_steps=25, guidance=1.0)
    path = tmp_path / "v1.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": config, **content}, path)
    loaded = checkpoint.load(path)
    assert loaded["kind"] == "run" and loaded["version"] == checkpoint.VERSION
    # the grid drew with the run's seed and precision; the options it has gained since take their defaults
    assert loaded["config"]["grid"] == {"sampler": "ddpm", "steps": 25, "guidance": 1.0, "seed": config["seed"],
                                        "precision": "auto"}  # fmt: skip
    from ddpm_lib.config import config_from_dict, record_from_dict

    upgraded = config_from_dict(loaded["config"])
    assert upgraded.precision == "auto" and upgraded.grid.sampler == "ddpm" and upgraded.grid.eta == 0.0
    assert record_from_dict(loaded["record"]).precision == "bfloat16"  # what the run computed in
    assert loaded["record"]["steps"] == config["steps"]


def test_a_version_2_checkpoint_learnt_mnist(tmp_path):
    """Version 2 configs predate --dataset: every run then learnt MNIST."""
    content = run_content()
    del content["record"]
    content["config"] = {key: value for key, value in v3_config(False).items() if key != "dataset"}
    path = tmp_path / "v2.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 2, "kind": "run", **content}, path)
    loaded = checkpoint.load(path)
    assert loaded["version"] == checkpoint.VERSION and loaded["config"]["dataset"] == "mnist"
    assert set(loaded["config"]) <= set(asdict(TrainConfig()))
    classifier = tmp_path / "c.pt"
    torch.save(
        {"format": checkpoint.FORMAT, "version": 2, "kind": "classifier", "config": {}, "model": {}},
        classifier,
    )
    assert checkpoint.load(classifier)["config"] == {}  # a classifier's config is its constructor's


def test_a_version_3_checkpoint_splits_its_config_into_config_and_record(tmp_path):
    """Version 3 wrote what the run decided (world size, batch split, LR after scaling) into its config, and its
    bf16 and steps were the ones used."""
    content = run_content()
    del content["record"]
    content["config"] = {**v3_config(True), "world_size": 2, "per_process_batch_size": 64, "backend": "gloo",
                         "effective_lr": 2e-3}  # fmt: skip
    path = tmp_path / "v3.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 3, "kind": "run", **content}, path)
    loaded = checkpoint.load(path)
    assert loaded["version"] == checkpoint.VERSION and "world_size" not in loaded["config"]
    assert {k: loaded["record"][k] for k in ("world_size", "per_process_batch_size", "backend", "effective_lr",
                                             "precision", "steps")} == {
        "world_size": 2, "per_process_batch_size": 64, "backend": "gloo", "effective_lr": 2e-3,
        "precision": "bfloat16", "steps": 3000}  # fmt: skip
    assert loaded["config"]["precision"] == loaded["config"]["grid"]["precision"] == "auto"


def test_every_shipped_file_loads_and_loading_them_imports_no_training_code():
    """The shipped weights were written by earlier versions of the format; each loads, and builds its network."""
    from ddpm_lib.pretrained import WEIGHTS, available, load_classifier, load_pretrained

    for path in sorted(WEIGHTS.rglob("*.pt")):
        loaded = checkpoint.load(path)
        assert loaded["version"] == checkpoint.VERSION and loaded["kind"] in ("denoiser", "classifier"), path
        if loaded["kind"] == "denoiser":
            checkpoint.load_denoiser(path)
    for name in available():
        load_pretrained(name)
    load_classifier()
    load_classifier(dataset="fashion-mnist")
    code = (
        "import sys; from ddpm_lib.pretrained import load_pretrained, load_classifier; "
        "load_pretrained('ddpm_mnist'); load_classifier(); "
        "print(sorted(m for m in sys.modules if m.startswith('ddpm_lib')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        "ddpm_lib.training" not in loaded
        and "ddpm_lib.distributed" not in loaded
        and "ddpm_lib.runner" not in loaded
    )
