"""The weights the package ships: small, tensors only, with provenance, and they make digit-like images."""

import pytest
import torch

from ddpm_lib import checkpoint
from ddpm_lib.data import load_mnist
from ddpm_lib.generation import generate
from ddpm_lib.pretrained import WEIGHTS, load_classifier, load_pretrained, pretrained_path, provenance

PROVENANCE_FIELDS = {"command", "seed", "data", "steps", "training_wall_time_s", "machine", "parameters"}


def test_shipped_file_is_small_and_loads_with_weights_only():
    path = pretrained_path()
    assert path.stat().st_size < 5 * 1024 * 1024
    state = checkpoint.load(path, "denoiser")  # weights_only=True inside; the EMA weights, no optimiser state
    assert state["kind"] == "denoiser"


def test_provenance_names_how_to_reproduce_them():
    record = provenance()
    assert PROVENANCE_FIELDS <= set(record)
    assert record["command"].startswith("python -m ddpm_lib train")
    assert record["steps"] == checkpoint.load(pretrained_path())["step"]


#: every denoiser the package ships: the unconditional model, the class-conditional one (chapter 10), the two
#: short runs that differ only in the noise schedule (chapter 09) and the Fashion-MNIST model (chapter 15)
DENOISERS = ("ddpm_mnist", "ddpm_mnist_cond", "ddpm_mnist_short_linear", "ddpm_mnist_short_cosine",
             "ddpm_fashion_mnist_cond")  # fmt: skip


def test_every_shipped_denoiser_is_listed_here():
    from ddpm_lib.pretrained import available

    assert sorted(DENOISERS) == available()


@pytest.mark.parametrize("name", DENOISERS)
def test_every_shipped_denoiser_loads_with_its_provenance(name):
    path = pretrained_path(name)
    assert path.stat().st_size < 5 * 1024 * 1024
    state = checkpoint.load(path, "denoiser")
    record = provenance(name)
    assert PROVENANCE_FIELDS <= set(record) and record["command"].startswith("python -m ddpm_lib train")
    assert record["steps"] == state["step"] and record["model"] == state["config"]["model"]
    model, scheduler, _ = load_pretrained(name)
    assert not model.training and len(scheduler) == state["config"]["num_timesteps"]


def test_the_shipped_models_are_what_the_chapters_say():
    from ddpm_lib.schedule import CosineScheduler, LinearBetaScheduler

    assert load_pretrained("ddpm_mnist")[0].config["num_classes"] is None
    assert load_pretrained("ddpm_mnist_cond")[0].config["num_classes"] == 10
    assert isinstance(load_pretrained("ddpm_mnist_short_cosine")[1], CosineScheduler)
    assert isinstance(load_pretrained("ddpm_mnist_short_linear")[1], LinearBetaScheduler)
    fashion = load_pretrained("ddpm_fashion_mnist_cond")
    assert fashion[0].config == load_pretrained("ddpm_mnist_cond")[0].config  # the same network (chapter 15)
    assert fashion[2]["dataset"] == "fashion-mnist" and "--dataset fashion-mnist" in fashion[2]["command"]
    _, record = load_classifier(dataset="fashion-mnist")
    assert record["dataset"] == "fashion-mnist" and record["command"].startswith(
        "python -m ddpm_lib train-classifier"
    )
    short = [provenance(f"ddpm_mnist_short_{name}") for name in ("linear", "cosine")]
    assert short[0]["command"].replace("linear", "cosine") == short[1]["command"]  # only the schedule differs


def test_unknown_name_lists_what_exists():
    with pytest.raises(ValueError, match="ddpm_mnist"):
        pretrained_path("nope")
    assert (WEIGHTS / "ddpm_mnist.json").exists()


@pytest.mark.slow
def test_samples_look_like_digits_not_noise():
    model, scheduler, _ = load_pretrained()
    # in bfloat16 only where the CPU computes in it: elsewhere these 1000 steps took 18 minutes instead of one
    samples = generate(model, scheduler, 8, sampler="clip", seed=0)  # in the precision this CPU is fast in
    real = load_mnist("heldout", verbose=False).tensors[0]
    # background share and mean brightness close to real digits' (pure noise: ~0.3 and ~0.0)
    dark_real, dark_fake = (real < -0.5).float().mean(), (samples < -0.5).float().mean()
    assert abs(dark_fake - dark_real) < 0.08
    assert abs(samples.mean() - real.mean()) < 0.1
    # and not a blank canvas: every sample has a stroke
    assert ((samples > 0.5).flatten(1).float().mean(1) > 0.03).all()
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("name", [n for n in DENOISERS])
def test_the_recorded_command_still_builds_the_shipped_network(monkeypatch, tmp_path, name):
    """Re-running a shipped denoiser's command (``command_now`` where the options have moved since) would train the
    network that was shipped: the same U-Net options, schedule and data set."""
    import shlex

    from ddpm_lib import runner
    from ddpm_lib.cli import main
    from ddpm_lib.unet import Unet

    record = provenance(name)
    words = [
        w
        for w in shlex.split(record.get("command_now", record["command"]))
        if "=" not in w or w.startswith("-")
    ]
    assert words[:4] == ["python", "-m", "ddpm_lib", "train"], words
    out = words.index("--out")
    args = words[4:out] + words[out + 2 :] + ["--out", str(tmp_path / "run"), "--no-progress"]
    seen = []
    monkeypatch.setattr(runner, "run_training", lambda config, *a, **k: seen.append(config) or
                        {"stopped_by": None, "world_size": 1, "rank": 0, "step": config.steps})  # fmt: skip
    assert main(["train", *args]) in (0, None)
    (config,) = seen
    assert Unet(**config.model).config == Unet(**record["model"]).config
    assert (config.steps, config.seed, config.dataset) == (
        record["steps"],
        record["seed"],
        record.get("dataset", "mnist"),
    )
