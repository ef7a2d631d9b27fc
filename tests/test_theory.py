"""Tests of ``ddpm_lib.theory`` (promoted from chapters/03_theory.py): the toy mixture and its exact score, the
Gaussian KL, the discretised decoder, the terms of the variational bound and the bound estimator."""

import math

import pytest
import torch
from torch import nn

from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.theory import (
    BoundEstimate,
    ExactDenoiser,
    GaussianMixture,
    ToyDenoiser,
    bound_terms,
    decoder_std,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
    prior_term,
    toy_mixture,
    variational_bound,
)


def test_gaussian_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    means_1, means_2 = torch.randn((2, 3, 4), generator=generator, dtype=torch.float64)
    variances_1, variances_2 = torch.rand((2, 3, 4), generator=generator, dtype=torch.float64) * 3 + 1e-3
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(means_1, variances_1.sqrt()),
        torch.distributions.Normal(means_2, variances_2.sqrt()),
    )
    assert torch.allclose(gaussian_kl(means_1, variances_1, means_2, variances_2), expected, rtol=1e-12)
    # broadcasting a scalar reference, and zero for identical Gaussians
    standard = torch.distributions.kl_divergence(
        torch.distributions.Normal(means_1, variances_1.sqrt()), torch.distributions.Normal(0.0, 1.0)
    )
    assert torch.allclose(gaussian_kl(means_1, variances_1, 0.0, 1.0), standard, rtol=1e-12)
    assert gaussian_kl(means_1, variances_1, means_1, variances_1).abs().max() < 1e-15


@pytest.mark.parametrize("bad", [dict(var_1=0.0), dict(var_2=-1.0), dict(var_1=torch.tensor([1.0, 0.0]))])
def test_gaussian_kl_refuses_non_positive_variances(bad):
    arguments = dict(mean_1=0.0, var_1=1.0, mean_2=0.0, var_2=1.0) | bad
    with pytest.raises(ValueError, match="var_"):
        gaussian_kl(**arguments)


@pytest.mark.parametrize("alpha_bar", [1.0, 0.9, 0.3, 4e-5])
def test_score_is_the_gradient_of_the_log_density(alpha_bar):
    mixture = toy_mixture().noised(alpha_bar)
    x = mixture.sample(64, torch.Generator().manual_seed(1)).requires_grad_()
    (gradient,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    assert torch.allclose(mixture.score(x.detach()), gradient, rtol=1e-10, atol=1e-10)


def test_log_prob_matches_torch_mixture():
    mixture = toy_mixture()
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(mixture.weights),
        torch.distributions.MultivariateNormal(mixture.means, mixture.covariances),
    )
    x = torch.randn((100, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(mixture.log_prob(x), reference.log_prob(x), rtol=1e-12)
    assert torch.allclose(mixture.responsibilities(x).sum(1), torch.ones(100, dtype=torch.float64))


def test_noised_mixture_is_the_law_of_q_sample():
    """Means scale by sqrt(alpha_bar), covariances become alpha_bar C + (1 - alpha_bar) I; noised(1) is the data."""
    mixture = toy_mixture()
    noised = mixture.noised(0.36)
    assert torch.allclose(noised.means, 0.6 * mixture.means)
    assert torch.allclose(
        noised.covariances, 0.36 * mixture.covariances + 0.64 * torch.eye(2, dtype=torch.float64)
    )
    assert torch.allclose(noised.mean(), 0.6 * mixture.mean())
    assert torch.allclose(
        noised.covariance(), 0.36 * mixture.covariance() + 0.64 * torch.eye(2, dtype=torch.float64)
    )
    assert torch.equal(mixture.noised(1.0).covariances, mixture.covariances)


def test_samples_have_the_mixture_moments_and_weights():
    mixture = toy_mixture()
    n = 200_000
    x = mixture.sample(n, torch.Generator().manual_seed(3))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    assert (x.mean(0) - mixture.mean()).abs().max() < 4 * math.sqrt(0.3 / n)
    assert (torch.cov(x.T) - mixture.covariance()).abs().max() < 0.01
    shares = torch.bincount(mixture.responsibilities(x).argmax(1), minlength=6).double() / n
    assert (shares - mixture.weights).abs().max() < 0.01


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(weights=[0.5, 0.6]), "sum to 1"),
        (dict(weights=[1.5, -0.5]), "positive"),
        (dict(means=torch.zeros(3, 2)), "means must have shape"),
        (
            dict(covariances=torch.eye(2).expand(2, 2, 2) * torch.tensor([1.0, -1.0])[:, None, None]),
            "positive definite",
        ),
        (dict(covariances=torch.eye(3).expand(2, 3, 3)), "covariances must have shape"),
    ],
)
def test_mixture_refuses_bad_parameters(arguments, message):
    good = dict(weights=[0.5, 0.5], means=torch.zeros(2, 2), covariances=torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match=message):
        GaussianMixture(**(good | arguments))


def test_mixture_refuses_bad_input():
    mixture = toy_mixture()
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha_bar"):
            mixture.noised(bad)
    for bad in (torch.zeros(3), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long), [[0.0, 0.0]]):
        with pytest.raises(ValueError, match=r"x must be a floating-point tensor of shape \(N, 2\)"):
            mixture.score(bad)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            mixture.sample(bad)


def test_exact_denoiser_is_the_scaled_score():
    scheduler = LinearBetaScheduler()
    mixture = toy_mixture()
    model = ExactDenoiser(mixture, scheduler)
    x = torch.randn((6, 2), generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 0, 10, 500, 999, 10])
    eps = model(x, t)
    assert eps.shape == x.shape and eps.dtype == x.dtype
    for row, step in enumerate(t.tolist()):
        alpha_bar = scheduler.alpha_bars64[step]
        expected = -(1 - alpha_bar).sqrt() * mixture.noised(alpha_bar).score(x[row : row + 1].double())
        assert torch.allclose(eps[row].double(), expected[0], rtol=1e-5)
    with pytest.raises(ValueError, match="t must lie in 0..999"):
        model(x, torch.full((6,), 1000))


def test_discretized_decoder_probabilities_sum_to_one_over_the_bins():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, std in ((0.0, 0.01), (-1.0, 1e-4), (0.999, 0.002), (5.0, 0.3), (-0.3, 2.0), (0.1234, 0.0078)):
        probabilities = discretized_gaussian_log_likelihood(levels, mean, std).exp()
        assert abs(probabilities.sum().item() - 1) < 1e-10, (mean, std)
    # an inner bin is the mass of [x - 1/255, x + 1/255]; the edge bins reach to -inf / +inf
    normal = torch.distributions.Normal(
        torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    )
    x = levels[140]
    inner = normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)
    assert torch.allclose(discretized_gaussian_log_likelihood(x, 0.1, 0.05).exp(), inner, rtol=1e-10)
    assert torch.allclose(
        discretized_gaussian_log_likelihood(-1.0, 0.1, 0.05).exp(),
        normal.cdf(torch.tensor(-1 + 1 / 255)),
        rtol=1e-10,
    )
    # far in a tail the log-probability stays finite and accurate
    far = discretized_gaussian_log_likelihood(levels[200], -1.0, 0.01).item()
    assert math.isfinite(far) and far < -1e4


def test_discretized_decoder_refuses_bad_input():
    with pytest.raises(ValueError, match="grid of 256 levels"):
        discretized_gaussian_log_likelihood(torch.tensor([0.5]), 0.0, 0.1)  # 0.5 is not a level
    with pytest.raises(ValueError, match="grid of 256 levels"):
        discretized_gaussian_log_likelihood(torch.tensor([1.5]), 0.0, 0.1)
    with pytest.raises(ValueError, match="std must be positive"):
        discretized_gaussian_log_likelihood(torch.tensor([1.0]), 0.0, 0.0)
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        discretized_gaussian_log_likelihood(torch.tensor([1.0]), 0.0, 0.1, bins=1)


class KnownErrorPredictor(nn.Module):
    """ε̂ = the true noise of x_t (it is told x0) + offset · (t + 1): every term of the bound is a fixed number."""

    def __init__(self, scheduler, x0: torch.Tensor, offset: float):
        super().__init__()
        self.scheduler, self.x0, self.offset = scheduler, x0, offset

    def forward(self, x_t, t):
        alpha_bar = self.scheduler.alpha_bars64[t][:, None]
        true_eps = (x_t.double() - alpha_bar.sqrt() * self.x0.double()) / (1 - alpha_bar).sqrt()
        return (true_eps + self.offset * (t[:, None] + 1)).to(x_t.dtype)


def eps_weights(scheduler) -> torch.Tensor:
    """λ_t = β_t / (2 α_t (1 − ᾱ_{t−1})) for t ≥ 1 (index 0 unused)."""
    alpha_bars = scheduler.alpha_bars64
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    alphas = alpha_bars / alpha_bars_prev
    return (1 - alphas) / (2 * alphas * (1 - alpha_bars_prev))


def test_kl_terms_are_weighted_noise_errors():
    scheduler = LinearBetaScheduler()
    x0 = torch.tensor([[0.2, -0.4, 0.9]])
    model = KnownErrorPredictor(scheduler, x0, 0.01)
    t = torch.tensor([1, 2, 50, 999])
    terms = bound_terms(model, scheduler, x0.expand(4, -1), t, torch.randn((4, 3)), decoder="gaussian")
    expected = eps_weights(scheduler)[t] * 3 * (0.01 * (t + 1).double()) ** 2
    assert torch.allclose(terms, expected, rtol=1e-4)


def test_bound_estimator_is_unbiased_over_t():
    """On a 6-step schedule every term is a known number; the enumerated sum is exact and the estimator (uniform t,
    times T − 1) averages to it."""
    scheduler = LinearBetaScheduler(6, 0.05, 0.4)
    x0 = torch.tensor([[0.3, -0.7]])
    model = KnownErrorPredictor(scheduler, x0, 0.2)
    each_t = torch.stack(
        [
            bound_terms(model, scheduler, x0, torch.tensor([t]), torch.randn((1, 2)), "gaussian")[0]
            for t in range(1, 6)
        ]
    )
    assert torch.allclose(
        each_t, eps_weights(scheduler)[1:] * 2 * (0.2 * torch.arange(2, 7).double()) ** 2, rtol=1e-5
    )
    enumerated = variational_bound(model, scheduler, x0, None, torch.Generator().manual_seed(5), "gaussian")
    assert torch.allclose(enumerated.steps, each_t.sum(), rtol=1e-5)
    assert torch.allclose(enumerated.total, enumerated.prior + enumerated.steps + enumerated.decoder)
    assert enumerated.variance is None and enumerated.standard_error() is None
    # 4000 draws of t: every t equally often, within sampling error, and the mean is the enumerated sum
    sampled = variational_bound(
        model, scheduler, x0.expand(40, -1), 100, torch.Generator().manual_seed(6), "gaussian"
    )
    per_draw_se = (5 * each_t).std().item() / math.sqrt(4000)
    assert abs(sampled.steps.mean().item() - each_t.sum().item()) < 4 * per_draw_se
    assert sampled.standard_error() > 0
    assert math.isclose(sampled.standard_error(), sampled.variance.sum().sqrt().item() / 40)
    assert math.isclose(sampled.bits_per_dim(), sampled.mean() / (2 * math.log(2)))


def test_prior_term_is_chapter_01s_kl():
    scheduler = LinearBetaScheduler()
    x0 = torch.tensor([[1.0, -1.0, 0.0, 0.5]])
    alpha_bar = scheduler.alpha_bars64[-1]
    expected = (0.5 * (alpha_bar * x0.double() ** 2 - alpha_bar - torch.log(1 - alpha_bar))).sum()
    assert torch.allclose(prior_term(scheduler, x0), expected.reshape(1), rtol=1e-10)


def test_decoder_std_is_the_posterior_std_at_t_1():
    scheduler = LinearBetaScheduler()
    assert math.isclose(decoder_std(scheduler), scheduler.posterior_variances[1].sqrt().item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="at least 2 timesteps"):
        decoder_std(LinearBetaScheduler(1))


def test_gaussian_log_likelihood_matches_torch():
    x, mean, std = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.0]), torch.tensor([0.5, 2.0])
    expected = torch.distributions.Normal(mean.double(), std.double()).log_prob(x.double())
    assert torch.allclose(gaussian_log_likelihood(x, mean, std), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(t_samples=1), "t_samples must be None"),
        (dict(t_samples=2.5), "t_samples must be None"),
        (dict(t_samples=True), "t_samples must be None"),
        (dict(decoder="logistic"), "decoder must be one of"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(x0=torch.zeros(3, dtype=torch.long)), "x0 must be a floating-point tensor"),
        (dict(x0=torch.zeros(3)), "x0 must be a floating-point tensor"),
        (dict(scheduler=LinearBetaScheduler(1)), "at least 2 timesteps"),
        (dict(x0=torch.full((2, 1, 2, 2), 0.5)), "grid of 256 levels"),
    ],
)
def test_variational_bound_refuses_bad_input(arguments, message):
    scheduler = arguments.pop("scheduler", LinearBetaScheduler(10, 0.01, 0.2))
    call = dict(x0=torch.zeros((2, 1, 2, 2)), t_samples=2, decoder="discretized") | arguments
    model = ToyDenoiser(dim=4)

    def flat_model(x, t):
        return model(x.flatten(1), t).reshape(x.shape)

    with pytest.raises(ValueError, match=message):
        variational_bound(flat_model, scheduler, generator=torch.Generator().manual_seed(0), **call)


def test_bound_of_an_image_batch_is_finite_and_reported_in_bits():
    """A random network on 256-level images: finite terms, bits per dimension = nats / (784 ln 2)."""
    scheduler = LinearBetaScheduler()
    model = ToyDenoiser(dim=784, hidden=16, layers=1)

    def image_model(x, t):
        return model(x.flatten(1), t).reshape(x.shape)

    x0 = torch.randint(0, 256, (3, 1, 28, 28), generator=torch.Generator().manual_seed(7)).float() / 127.5 - 1
    estimate = variational_bound(image_model, scheduler, x0, 3, torch.Generator().manual_seed(8))
    assert isinstance(estimate, BoundEstimate) and estimate.dims == 784
    assert torch.isfinite(estimate.total).all() and (estimate.decoder > 0).all()
    assert math.isclose(estimate.bits_per_dim(), estimate.mean() / (784 * math.log(2)))
    assert math.isclose(
        estimate.bits_per_dim_standard_error(), estimate.standard_error() / (784 * math.log(2))
    )


def test_toy_denoiser_shapes_and_bad_arguments():
    model = ToyDenoiser()
    out = model(torch.zeros((5, 2), dtype=torch.float64), torch.arange(5))
    assert out.shape == (5, 2) and out.dtype == torch.float64
    for bad in (dict(hidden=0), dict(layers=1.5), dict(time_features=7), dict(dim=True)):
        with pytest.raises(ValueError):
            ToyDenoiser(**bad)
