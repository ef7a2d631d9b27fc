"""ddpm_lib.diffusion: q_sample / q_step against diffusers, the chain, and variance preservation."""

import pytest
import torch

from ddpm_lib.diffusion import q_sample, q_step
from ddpm_lib.schedule import LinearBetaScheduler


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(1000, 1e-4, 0.02)


def test_q_sample_matches_diffusers_add_noise(scheduler):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((64, 1, 28, 28), generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.cat(
        [torch.tensor([0, 1, 2, 499, 998, 999]), torch.randint(0, 1000, (58,), generator=generator)]
    )
    ours = q_sample(scheduler, x0, t, noise)
    expected = theirs.add_noise(x0, noise, t)
    assert (ours - expected).abs().max().item() <= 1e-6


def test_q_sample_formula_and_endpoints(scheduler):
    x0 = torch.linspace(-1, 1, 10).reshape(10, 1)
    noise = torch.ones_like(x0)
    t = torch.full((10,), 300)
    alpha_bar = scheduler.alpha_bars[300].double()
    expected = alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * noise.double()
    torch.testing.assert_close(q_sample(scheduler, x0, t, noise).double(), expected, rtol=1e-6, atol=1e-7)
    # t = 0 barely changes the image; t = T-1 is almost pure noise
    assert (q_sample(scheduler, x0, 0, noise) - x0).abs().max() < 0.011
    assert (q_sample(scheduler, x0, 999, noise) - noise).abs().max() < 0.007


def test_noise_coefficient_is_sqrt_one_minus_alpha_bar_not_one_minus_sqrt(scheduler):
    """Regression test for the reference's bug: (1 - sqrt(abar)) * noise."""
    x0 = torch.zeros(1, 1, 2, 2)
    noise = torch.ones_like(x0)
    coefficient = q_sample(scheduler, x0, 367, noise)[0, 0, 0, 0].item()
    abar = scheduler.alpha_bars[367].item()
    assert coefficient == pytest.approx((1 - abar) ** 0.5, rel=1e-6)
    assert abs(coefficient - (1 - abar**0.5)) > 0.3


def test_per_sample_timesteps_broadcast(scheduler):
    x0 = torch.randn(3, 1, 4, 4)
    noise = torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    together = q_sample(scheduler, x0, t, noise)
    for i in range(3):
        torch.testing.assert_close(
            together[i : i + 1], q_sample(scheduler, x0[i : i + 1], int(t[i]), noise[i : i + 1])
        )


def test_variance_preserving_for_unit_variance_data(scheduler):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn((4000, 64), generator=generator)  # unit variance
    for t in (0, 100, 367, 700, 999):
        x_t = q_sample(scheduler, x0, t, torch.randn(x0.shape, generator=generator))
        assert x_t.var().item() == pytest.approx(1.0, abs=0.01), t


def test_closed_form_agrees_with_the_step_by_step_chain(scheduler):
    generator = torch.Generator().manual_seed(2)
    x0 = torch.rand((1, 1, 8, 8), generator=generator) * 2 - 1
    x0 = x0.expand(3000, -1, -1, -1)
    x = x0.clone()
    for t in range(400):
        x = q_step(scheduler, x, t, torch.randn(x.shape, generator=generator))
    abar = scheduler.alpha_bars[399]
    z = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def test_q_step_formula(scheduler):
    x = torch.full((2, 3), 0.5)
    noise = torch.full((2, 3), -1.0)
    out = q_step(scheduler, x, torch.tensor([10, 10]), noise)
    expected = scheduler.alphas[10].sqrt() * 0.5 - scheduler.betas[10].sqrt()
    torch.testing.assert_close(out, torch.full((2, 3), expected.item()))


@pytest.mark.parametrize(
    "x0, t, noise, message",
    [
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1, 2]), torch.zeros(2, 1, 4, 4), "t must"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, 4, 4), "t must"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0, 1000]), torch.zeros(2, 1, 4, 4), "0..999"),
        (torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0]), torch.zeros(2, 1, 4, 4), "integer"),
        (torch.zeros(2, 1, 4, 4), 0, torch.zeros(2, 1, 4, 5), "noise"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.long), 0, torch.zeros(2, 1, 4, 4), "x0"),
        (torch.tensor(1.0), 0, torch.tensor(1.0), "x0"),
    ],
)
def test_bad_input_raises_a_clear_value_error(scheduler, x0, t, noise, message):
    with pytest.raises(ValueError, match=message):
        q_sample(scheduler, x0, t, noise)
