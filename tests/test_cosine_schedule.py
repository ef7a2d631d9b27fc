"""Chapter 09: NoiseSchedule (chapter 01's base), CosineScheduler against diffusers, make_schedule, and training
and sampling with either schedule."""

import json
import math

import pytest
import torch

from ddpm_lib.checkpoint import load_denoiser
from ddpm_lib.cli import main
from ddpm_lib.diffusion import q_sample
from ddpm_lib.sampling import sample
from ddpm_lib.schedule import SCHEDULES, CosineScheduler, LinearBetaScheduler, NoiseSchedule, make_schedule

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def cosine():
    return CosineScheduler(1000)


def test_betas_and_alpha_bars_match_diffusers_squaredcos_cap_v2(cosine):
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert torch.equal(cosine.betas, reference.betas)
    assert torch.equal(cosine.alpha_bars, reference.alphas_cumprod)


@pytest.mark.parametrize("t", [0, 1, 500, 998, 999])
def test_a_ddpm_step_matches_diffusers_with_the_cosine_schedule(cosine, t):
    reference = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        variance_type="fixed_small",
    )
    x_t = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(t))

    def model(x, step):
        return 0.3 * x

    ours = sample(cosine, t, model, x_t, torch.Generator().manual_seed(1))
    theirs = reference.step(model(x_t, t), t, x_t, generator=torch.Generator().manual_seed(1)).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-3, rtol=1e-4)


def test_alpha_bar_follows_the_squared_cosine_and_only_the_last_beta_is_capped(cosine):
    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 100, 500, 900, 998):
        assert math.isclose(cosine.alpha_bars[t].item(), f((t + 1) / 1000) / f(0), rel_tol=1e-4)
    assert int((cosine.betas >= 0.999 - 1e-6).sum()) == 1 and cosine.betas[-1] == pytest.approx(0.999)
    assert (cosine.alpha_bars[1:] < cosine.alpha_bars[:-1]).all()


def test_the_cosine_schedule_keeps_the_signal_longer_than_the_linear_one(cosine):
    linear = LinearBetaScheduler()
    first_below_one = [int(torch.nonzero(s.snr < 1)[0]) for s in (linear, cosine)]
    assert first_below_one[0] < 350 < 450 < first_below_one[1]


def test_posterior_tables_come_from_the_base_class(cosine):
    t = torch.arange(1, 1000)
    expected = (
        (1 - cosine.alpha_bars_prev[t].double()) / (1 - cosine.alpha_bars[t].double()) * cosine.betas[t]
    )
    assert torch.allclose(cosine.posterior_variances[t].double(), expected, rtol=1e-4)
    assert cosine.posterior_variances[0] == 0 and cosine.alpha_bars_prev[0] == 1


def test_q_sample_preserves_variance_under_the_cosine_schedule(cosine):
    x0 = torch.randn((20_000, 1, 1, 1))
    for t in (0, 300, 999):
        x_t = q_sample(
            cosine,
            x0,
            torch.full((len(x0),), t),
            torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)),
        )
        assert abs(x_t.var().item() - 1) < 0.03


def test_noise_schedule_from_any_betas():
    schedule = NoiseSchedule(torch.full((10,), 0.1))
    assert len(schedule) == 10 and torch.allclose(schedule.alpha_bars, 0.9 ** torch.arange(1, 11).float())
    assert repr(schedule) == "NoiseSchedule(num_timesteps=10)"
    assert (
        NoiseSchedule(torch.tensor([0.5, 1.0])).alpha_bars[-1] == 0
    )  # beta = 1 is allowed: zero terminal SNR


@pytest.mark.parametrize(
    "betas, fragment",
    [
        (torch.tensor([]), "at least one"),
        (torch.zeros(3), r"\(0, 1\]"),
        (torch.tensor([0.1, 1.5]), r"\(0, 1\]"),
        (torch.ones((2, 2)) * 0.1, "1-D"),
        (torch.tensor([1, 2]), "floating"),
        ([0.1, 0.2], "1-D tensor"),
    ],
)
def test_noise_schedule_rejects_bad_betas(betas, fragment):
    with pytest.raises(ValueError, match=fragment):
        NoiseSchedule(betas)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_timesteps": 0}, "num_timesteps"),
        ({"s": -0.1}, "s must"),
        ({"max_beta": 1.0}, "max_beta"),
        ({"num_timesteps": 2.5}, "num_timesteps"),
    ],  # fmt: skip
)
def test_cosine_scheduler_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        CosineScheduler(**kwargs)


def test_make_schedule_names_the_choices():
    assert isinstance(make_schedule("cosine", 50), CosineScheduler) and len(make_schedule("linear", 50)) == 50
    assert set(SCHEDULES) == {"linear", "cosine"}
    with pytest.raises(ValueError, match="'linear', 'cosine'"):
        make_schedule("sigmoid")


@pytest.mark.slow
def test_a_cosine_run_records_its_schedule_and_its_checkpoint_rebuilds_it(tmp_path):
    out = tmp_path / "run"
    tiny = ["--steps", "2", "--batch-size", "8", "--base-dim", "8", "--dim-mults", "2", "--eval-every", "0"]
    assert (
        main(
            ["train", *tiny, "--schedule", "cosine", "--sampler", "clip", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["schedule"] == "cosine"
    _, schedule, config = load_denoiser(out / "checkpoints" / "last.pt")
    assert isinstance(schedule, CosineScheduler) and config.schedule == "cosine"


def test_train_rejects_an_unknown_schedule(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as info:
        main(["train", "--schedule", "sigmoid"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err
