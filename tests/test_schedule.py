"""ddpm_lib.schedule.LinearBetaScheduler: values, invariants, getters and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm_lib.schedule import LinearBetaScheduler


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(1000, 1e-4, 0.02)


def reference_alpha_bars(T=1000, beta_start=1e-4, beta_end=0.02):
    """Independent float64 computation with numpy."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, T))


def test_default_arguments_are_the_reference_schedule():
    default = LinearBetaScheduler()
    assert (default.num_timesteps, default.beta_start, default.beta_end) == (1000, 1e-4, 0.02)


@pytest.mark.parametrize("t", [0, 499, 999])
def test_alpha_bar_values_to_one_part_in_a_million(scheduler, t):
    expected = reference_alpha_bars()[t]
    assert math.isclose(scheduler.alpha_bars[t].item(), expected, rel_tol=1e-6)


def test_alpha_bar_at_the_end_is_about_4e_minus_5(scheduler):
    assert math.isclose(scheduler.alpha_bars[999].item(), 4.036e-5, rel_tol=1e-3)


def test_tables_are_float32_of_length_T(scheduler):
    names = ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "posterior_variances", "snr")
    for name in names + ("posterior_mean_coef_x0", "posterior_mean_coef_xt"):
        table = getattr(scheduler, name)
        assert table.dtype == torch.float32 and table.shape == (1000,), name


def test_derived_tables(scheduler):
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bars = reference_alpha_bars()
    prev = np.concatenate([[1.0], alpha_bars[:-1]])
    np.testing.assert_allclose(scheduler.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(scheduler.alphas, 1 - betas, rtol=1e-6)
    np.testing.assert_allclose(scheduler.alpha_bars_prev, prev, rtol=1e-6)
    np.testing.assert_allclose(
        scheduler.posterior_variances, (1 - prev) / (1 - alpha_bars) * betas, rtol=1e-5
    )
    np.testing.assert_allclose(scheduler.snr, alpha_bars / (1 - alpha_bars), rtol=1e-5)
    assert scheduler.posterior_variances[0] == 0
    np.testing.assert_allclose(
        scheduler.posterior_mean_coef_x0, np.sqrt(prev) * betas / (1 - alpha_bars), rtol=1e-5
    )
    np.testing.assert_allclose(
        scheduler.posterior_mean_coef_xt, np.sqrt(1 - betas) * (1 - prev) / (1 - alpha_bars), rtol=1e-5
    )
    assert scheduler.posterior_mean_coef_x0[0] == 1 and scheduler.posterior_mean_coef_xt[0] == 0


def test_matches_diffusers_ddpm_scheduler(scheduler):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )
    torch.testing.assert_close(scheduler.betas, theirs.betas, rtol=1e-6, atol=0)
    # diffusers multiplies in float32; we multiply in float64 and round once
    torch.testing.assert_close(scheduler.alpha_bars, theirs.alphas_cumprod, rtol=1e-5, atol=0)


valid_schedules = st.tuples(
    st.integers(1, 2000),
    st.floats(1e-6, 0.5, allow_nan=False),
    st.floats(1e-6, 0.5, allow_nan=False),
).map(lambda a: (a[0], min(a[1], a[2]), max(a[1], a[2])))


@settings(max_examples=60, deadline=None)
@given(valid_schedules)
def test_monotone_and_in_range_for_any_valid_schedule(args):
    T, beta_start, beta_end = args
    s = LinearBetaScheduler(T, beta_start, beta_end)
    assert len(s) == T
    assert torch.all((s.betas > 0) & (s.betas < 1))
    assert torch.all(s.betas[1:] >= s.betas[:-1])
    assert torch.all((s.alpha_bars >= 0) & (s.alpha_bars <= 1))
    assert torch.all(s.alpha_bars[1:] <= s.alpha_bars[:-1])
    assert torch.all(s.alpha_bars_prev[1:] == s.alpha_bars[:-1]) and s.alpha_bars_prev[0] == 1
    assert torch.all(s.posterior_variances >= 0)
    assert torch.all(s.posterior_variances <= s.betas * (1 + 1e-6))


@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3), (4, 1, 1, 1)])
def test_getters_keep_the_shape_of_t(scheduler, shape):
    t = torch.randint(0, 1000, shape, generator=torch.Generator().manual_seed(0))
    for getter, table in (
        (scheduler.get_variance, scheduler.betas),
        (scheduler.get_alpha, scheduler.alphas),
        (scheduler.get_bar_alpha, scheduler.alpha_bars),
        (scheduler.get_bar_alpha_prev, scheduler.alpha_bars_prev),
        (scheduler.get_posterior_variance, scheduler.posterior_variances),
    ):
        out = getter(t)
        assert out.shape == t.shape and out.device == t.device
        assert torch.equal(out, table[t])


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_getters_take_any_integer_dtype_and_python_ints(scheduler, dtype):
    assert scheduler.get_bar_alpha(torch.tensor([3], dtype=dtype)).item() == scheduler.alpha_bars[3]
    assert scheduler.get_bar_alpha(3).item() == scheduler.alpha_bars[3]


def test_no_wrap_around_at_t_zero(scheduler):
    """The reference read alpha_bars[t - 1] at t = 0, i.e. the LAST element."""
    assert scheduler.get_bar_alpha_prev(0).item() == 1.0
    assert scheduler.get_bar_alpha_prev(0).item() != scheduler.alpha_bars[-1].item()
    assert scheduler.get_posterior_variance(0).item() == 0.0


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(num_timesteps=0), "num_timesteps"),
        (dict(num_timesteps=-5), "num_timesteps"),
        (dict(num_timesteps=10.5), "num_timesteps"),
        (dict(num_timesteps=True), "num_timesteps"),
        (dict(beta_start=0.0), "beta_start"),
        (dict(beta_start=-1e-4), "beta_start"),
        (dict(beta_end=1.0), "beta_end"),
        (dict(beta_end=float("nan")), "beta_end"),
        (dict(beta_start="0.1"), "beta_start"),
        (dict(beta_start=0.03, beta_end=0.02), "beta_start"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        LinearBetaScheduler(**kwargs)


@pytest.mark.parametrize(
    "t, message",
    [
        (torch.tensor([1000]), "0..999"),
        (torch.tensor([-1]), "0..999"),
        (1000, "0..999"),
        (torch.tensor([0.0]), "integer"),
        (torch.tensor([True]), "integer"),
        (0.5, "integer"),
        ([1, 2], "integer"),
        (True, "integer"),
    ],
)
def test_bad_timesteps_raise(scheduler, t, message):
    for getter in (scheduler.get_variance, scheduler.get_alpha, scheduler.get_bar_alpha):
        with pytest.raises(ValueError, match=message):
            getter(t)
