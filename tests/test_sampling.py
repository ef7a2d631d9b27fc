"""ddpm_lib.sampling against Hugging Face diffusers' DDPMScheduler (full and respaced chains), the one
posterior step, and the reference's index bug at t = 0."""

import pytest
import torch
from stand_ins import StandIn

from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.generation import save_image
from ddpm_lib.sampling import posterior_step, reverse_step, sample, sample_clip, sample_loop
from ddpm_lib.schedule import CosineScheduler, LinearBetaScheduler
from ddpm_lib.training import ddpm_loss

diffusers = pytest.importorskip("diffusers")


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
    ours = sample_loop(model, scheduler, x_T, clip=sampler == "clip", generator=generator)
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


def test_the_step_at_t_zero_never_reads_the_end_of_the_alpha_bar_table():
    """The reference read alpha_bar[t - 1] at t = 0, i.e. alpha_bar[T - 1]. Poison that entry: the last step
    must not change (it uses alpha_bar_{-1} = 1)."""
    model, x_t = StandIn(), torch.randn((2, 1, 6, 6), generator=torch.Generator().manual_seed(4))
    clean = LinearBetaScheduler(1000, 1e-4, 0.02)
    poisoned = LinearBetaScheduler(1000, 1e-4, 0.02)
    poisoned.alpha_bars[-1] = float("nan")
    for step in (sample, sample_clip):
        expected = step(clean, 0, model, x_t)
        assert torch.equal(step(poisoned, 0, model, x_t), expected), step.__name__


@pytest.mark.parametrize("schedule", [LinearBetaScheduler(), CosineScheduler()], ids=["linear", "cosine"])
def test_posterior_step_of_one_step_is_chapter_01s_posterior(schedule):
    """posterior_step(t, t - 1) draws from the posterior whose tables chapter 01 computes in float64 from beta:
    the same mean coefficients and standard deviation (replayed with the same z)."""
    x0 = torch.rand((3, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 2 - 1
    x_t = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    for t in (1, 10, 500, 998, 999):
        got = posterior_step(schedule, t, t - 1, x0, x_t, torch.Generator().manual_seed(t))
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        expected = (
            schedule.posterior_mean_coef_x0[t] * x0
            + schedule.posterior_mean_coef_xt[t] * x_t
            + schedule.posterior_variances[t].sqrt() * z
        )
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-5, msg=f"t = {t}")
    # the last step lands on the clean end and returns x0_hat itself, drawing nothing
    generator = torch.Generator().manual_seed(9)
    state = generator.get_state()
    assert torch.equal(posterior_step(schedule, 0, -1, x0, x_t, generator), x0)
    assert torch.equal(generator.get_state(), state)


@pytest.mark.parametrize("clip", [False, True], ids=["ddpm", "clip"])
@pytest.mark.parametrize("spacing, n", [("trailing", 10), ("leading", 10), ("linspace", 7), ("trailing", 1)])
def test_respaced_chain_matches_diffusers_ddpm_scheduler(scheduler, clip, spacing, n):
    """DDPM on a respaced chain (sample_loop with timesteps) is diffusers' DDPMScheduler.step with the jump's
    own beta. (diffusers picks the previous timestep as t - T/n; for these spacings and n, that is the next
    entry of the list, so the two chains jump alike.)"""
    model = StandIn()
    theirs = their_scheduler(clip)
    steps = timesteps_for(1000, n, spacing)
    theirs.timesteps = steps
    theirs.num_inference_steps = n
    theirs.custom_timesteps = True  # previous timestep = next entry of the list (diffusers' custom timesteps)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=generator)
    with torch.no_grad():
        for t in steps.tolist():
            x = theirs.step(model(x, torch.full((2,), t)), t, x, generator=generator).prev_sample
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 1, 8, 8), generator=generator)
    ours = sample_loop(model, scheduler, x_T, steps, clip=clip, generator=generator)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-3)


def test_sample_loop_over_every_timestep_is_the_full_chain(scheduler):
    model = StandIn()
    full = sample_loop(
        model, scheduler, torch.ones(2, 1, 4, 4), clip=False, generator=torch.Generator().manual_seed(3)
    )
    listed = sample_loop(model, scheduler, torch.ones(2, 1, 4, 4), timesteps_for(1000, 1000), clip=False,
                         generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(full, listed)


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
        (torch.tensor([1, 2]), torch.zeros(1, 1, 2, 2), "integer"),
        (3, torch.zeros(4, dtype=torch.long), "x_t"),
    ],
)
def test_bad_step_input(scheduler, t, x_t, message):
    for step in (sample, sample_clip):
        with pytest.raises(ValueError, match=message):
            step(scheduler, t, StandIn(), x_t)


def test_bad_loop_input(scheduler):
    with pytest.raises(ValueError, match="strictly descending"):
        sample_loop(StandIn(), scheduler, torch.zeros(1, 1, 2, 2), [5, 7])
    with pytest.raises(ValueError, match="x_T must be"):
        sample_loop(StandIn(), scheduler, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="t_prev must lie in -1..4"):
        reverse_step(scheduler, 5, 5, StandIn(), torch.zeros(1, 1, 2, 2))
