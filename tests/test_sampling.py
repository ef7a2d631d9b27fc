"""ddpm_lib.sampling against Hugging Face diffusers' DDPMScheduler, plus the reference's index bugs."""

import math

import pytest
import torch
from torch import nn

from ddpm_lib.sampling import generate, sample, sample_clip, sample_loop, save_image
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import ddpm_loss

diffusers = pytest.importorskip("diffusers")


class StandIn(nn.Module):
    """A fixed, deterministic 'noise predictor': a smooth function of x and t, no weights to learn."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # so it has a device and parameters

    def forward(self, x, t):
        scale = (t.to(x.dtype) / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.9 * torch.tanh(x) * (0.5 + scale) + 0.05 * torch.sin(3 * x) + self.anchor


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(1000, 1e-4, 0.02)


def their_scheduler(clip):
    s = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=clip, variance_type="fixed_small", prediction_type="epsilon",
    )  # fmt: skip
    s.set_timesteps(1000)
    return s


@pytest.mark.parametrize("clip, ours", [(True, sample_clip), (False, sample)], ids=["clip", "ddpm"])
@pytest.mark.parametrize("t", [0, 1, 2, 500, 998, 999])
def test_one_step_matches_diffusers(scheduler, clip, ours, t):
    model = StandIn()
    x_t = 1.5 * torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(t))
    theirs = their_scheduler(clip)
    eps = model(x_t, torch.full((4,), t))
    expected = theirs.step(eps, t, x_t, generator=torch.Generator().manual_seed(42)).prev_sample
    got = ours(scheduler, t, model, x_t, generator=torch.Generator().manual_seed(42))
    assert (got - expected).abs().max().item() < 1e-3


@pytest.mark.parametrize("clip, sampler", [(True, "clip"), (False, "ddpm")], ids=["clip", "ddpm"])
def test_full_loop_matches_diffusers(scheduler, clip, sampler):
    model = StandIn()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=generator)
    theirs = their_scheduler(clip)
    with torch.no_grad():
        for t in theirs.timesteps:
            x = theirs.step(model(x, torch.full((2,), int(t))), int(t), x, generator=generator).prev_sample
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 1, 8, 8), generator=generator)
    ours = sample_loop(scheduler, model, x_T, sampler, generator)
    # without clipping this stand-in drifts far outside [-1, 1]: compare relative to the magnitude
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-3)


def test_last_step_returns_clamped_x0_hat_and_draws_no_noise(scheduler):
    model = StandIn()
    x_t = 3 * torch.randn((3, 1, 5, 5), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    out = sample_clip(scheduler, 0, model, x_t, generator)
    abar = scheduler.alpha_bars[0]
    x0_hat = ((x_t - (1 - abar).sqrt() * model(x_t, torch.zeros(3, dtype=torch.long))) / abar.sqrt()).clamp(
        -1, 1
    )
    torch.testing.assert_close(out, x0_hat)
    assert torch.equal(generator.get_state(), state)
    sample(scheduler, 0, model, x_t, generator)
    assert torch.equal(generator.get_state(), state)


def test_no_wrap_around_to_the_last_alpha_bar_at_t_zero(scheduler):
    """The reference read alpha_bar[t - 1] at t = 0, i.e. alpha_bar[999] ~ 4e-5."""
    assert scheduler.posterior_mean_coef_x0[0] == 1.0
    assert scheduler.posterior_mean_coef_xt[0] == 0.0
    wrapped = math.sqrt(scheduler.alpha_bars[-1]) * scheduler.betas[0] / (1 - scheduler.alpha_bars[0])
    assert abs(wrapped - 1.0) > 0.9  # what the bug would have used instead


def test_training_noises_with_sqrt_one_minus_alpha_bar(scheduler):
    """The reference trained on (1 - sqrt(abar)) * noise; our objective must use sqrt(1 - abar)."""
    seen = {}

    def spy(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    x0 = torch.rand((16, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1
    ddpm_loss(spy, scheduler, x0, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (16,), generator=replay)
    noise = torch.randn(x0.shape, generator=replay)
    abar = scheduler.alpha_bars[t].reshape(-1, 1, 1, 1)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    assert not torch.allclose(seen["x_t"], abar.sqrt() * x0 + (1 - abar.sqrt()) * noise, atol=1e-2)


def test_generate_is_seeded_batched_and_in_range(scheduler):
    model = StandIn()
    short = LinearBetaScheduler(20, 1e-3, 0.2)
    a = generate(model, short, 5, seed=1)
    b = generate(model, short, 5, seed=1)
    c = generate(model, short, 5, seed=2)
    assert a.shape == (5, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_save_image_writes_a_grid(tmp_path):
    from PIL import Image

    short = LinearBetaScheduler(10, 1e-3, 0.2)
    path = tmp_path / "grid.png"
    save_image(StandIn(), short, path, size=16)
    width, height = Image.open(path).size
    assert width == height == 4 * 28 + 5 * 2  # 4x4 tiles with 2-pixel padding


@pytest.mark.parametrize(
    "t, x_t, message",
    [
        (1000, torch.zeros(1, 1, 2, 2), "0..999"),
        (-1, torch.zeros(1, 1, 2, 2), "0..999"),
        (0.5, torch.zeros(1, 1, 2, 2), "integer"),
        (torch.tensor([1, 2]), torch.zeros(1, 1, 2, 2), "single integer"),
        (3, torch.zeros(4, dtype=torch.long), "x_t"),
    ],
)
def test_bad_step_input(scheduler, t, x_t, message):
    for step in (sample, sample_clip):
        with pytest.raises(ValueError, match=message):
            step(scheduler, t, StandIn(), x_t)


def test_bad_loop_input(scheduler):
    with pytest.raises(ValueError, match="sampler"):
        sample_loop(scheduler, StandIn(), torch.zeros(1, 1, 2, 2), sampler="ddim")
    with pytest.raises(ValueError, match="n must"):
        generate(StandIn(), scheduler, 0)
