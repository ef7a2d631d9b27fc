# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Why it works: the theory on a 2-D toy
#
# Chapters [01](01_noise_schedule.py) and [02](02_forward_process.py) built the forward process. The rest of the course trains a network to undo it and
# samples digits with it, and each of those chapters uses a result of the theory: the reverse step is Gaussian,
# the network should predict the noise, the loss is a plain squared error. This chapter derives those results,
# on data small enough that every quantity is known exactly: a mixture of six Gaussians in the plane. We run the
# whole method on it once, end to end (train, sample, measure), with the same schedule and the same sampler
# code the MNIST model uses, and after each step of each derivation a cell checks it with numbers. Every
# check is built to fail if a coefficient of the formula is wrong. The last section computes the same
# bound for the digit model the course ships.
#
# **After this chapter you can**
#
# - derive the posterior $q(x_{t-1} \mid x_t, x_0)$ by completing the square, and check it against simulated chains;
# - derive the variational bound on $-\log p_\theta(x_0)$ and its split into $L_T$, $L_{t-1}$ and $L_0$, compute
#   the KL divergence between two Gaussians, and show why matching the posterior mean means predicting $\varepsilon$;
# - say what the simplified loss $L_\text{simple}$ and min-SNR weighting change relative to the bound;
# - compute the bound: in nats on the toy, where it lies above the exact negative log-likelihood and tightens with
#   training, and in bits per dimension for the shipped MNIST model, with a Monte-Carlo standard error;
# - explain why $\hat\varepsilon$ is a scaled score (Tweedie's formula), run Langevin dynamics with an exact score,
#   and say how the probability-flow ODE relates to the reverse process;
# - say why a Gaussian reverse step is enough when steps are small, and measure how much it is not with large ones;
# - use `ddpm_lib.theory`, promoted from this chapter.
#
# Symbols are those of the [notation](../notation.md) page. As in the code, $t = 0, \dots, T-1$ and
# $\bar\alpha_{-1} = 1$; section 3 says where it counts as the DDPM paper does.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import q_sample, q_step
from ddpm_lib.fast_sampling import ddim_sample, timesteps_for  # chapter 08: DDIM, an ODE solver
from ddpm_lib.generation import generate
from ddpm_lib.plotting import save_figure
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import posterior_step, sample_loop  # chapter 06's reverse step and sampling loop
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import ddpm_loss  # chapter 05's loss, to compare with the toy's

torch.manual_seed(0)
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
T = scheduler.num_timesteps
alpha_bars64 = scheduler.alpha_bars64  # ᾱ_t in float64: every exact check below uses it
print(f"profile: {PROFILE.name}; {scheduler}")

# %% [markdown]
# ## 1. A toy where everything is exact
#
# The data are points $x_0 \in \mathbb R^2$ drawn from a mixture of $K$ Gaussians,
#
# $$ q(x_0) = \sum_{k=1}^{K} \pi_k\, \mathcal N(x_0;\ m_k,\ C_k) . $$
#
# Noise them as [chapter 02](02_forward_process.py) does, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$. Given the
# component $k$, $x_t$ is a linear function of two independent Gaussians, so it is Gaussian, with mean
# $\sqrt{\bar\alpha_t}\,m_k$ and covariance $\bar\alpha_t C_k + (1-\bar\alpha_t) I$. Averaging over $k$:
#
# $$ q(x_t) = \sum_{k=1}^{K} \pi_k\, \mathcal N\!\left(x_t;\ \sqrt{\bar\alpha_t}\,m_k,\ \bar\alpha_t C_k + (1-\bar\alpha_t) I\right) . $$
#
# Every noised marginal is again a mixture of Gaussians: we know its density exactly, at every $t$, and its
# gradient $\nabla_x \log q(x)$, the **score**, which section 5 connects to the noise the network predicts:
#
# $$ \nabla_x \log q(x) = -\sum_k P(k \mid x)\, C_k^{-1}(x - m_k), \qquad
#    P(k \mid x) = \frac{\pi_k \mathcal N(x; m_k, C_k)}{q(x)} . $$
#
# The class below holds a mixture, and `noised` returns $q(x_t)$. The toy is six elongated Gaussians on a ring,
# with unequal weights, so that a sampler that gets the weights wrong is caught.

# %%
#| default_exp theory
#| export
import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn

from ddpm_lib.diffusion import convert_prediction, expand_like, prediction_of, q_sample
from ddpm_lib.schedule import NoiseSchedule


# %%
#| export
class GaussianMixture:
    r"""A mixture of Gaussians in D dimensions, q(x) = Σ_k π_k N(x; m_k, C_k), computed in float64.

    ``weights`` (K,): positive, summing to 1; ``means`` (K, D); ``covariances`` (K, D, D): symmetric positive
    definite. The methods take points ``x`` as an (N, D) floating-point tensor and return float64 tensors.
    """

    def __init__(self, weights, means, covariances):
        weights, means, covariances = (
            torch.as_tensor(value, dtype=torch.float64) for value in (weights, means, covariances)
        )
        if weights.dim() != 1 or len(weights) == 0 or not bool((weights > 0).all()):
            raise ValueError(
                f"weights must be a non-empty 1-D tensor of positive numbers, got {weights.tolist()}"
            )
        if abs(weights.sum().item() - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got a sum of {weights.sum().item():.12g}")
        k = len(weights)
        if means.dim() != 2 or means.shape[0] != k:
            raise ValueError(
                f"means must have shape (K, D) with K = {k} components, got {tuple(means.shape)}"
            )
        d = means.shape[1]
        if covariances.shape != (k, d, d):
            raise ValueError(f"covariances must have shape ({k}, {d}, {d}), got {tuple(covariances.shape)}")
        cholesky, info = torch.linalg.cholesky_ex(covariances)
        if not torch.allclose(covariances, covariances.transpose(1, 2)) or bool(info.any()):
            raise ValueError("covariances must be symmetric positive definite")
        self.weights, self.means, self.covariances = weights, means, covariances
        self.dim = d
        self._cholesky = cholesky
        self._precisions = torch.cholesky_inverse(cholesky)
        log_det = 2 * cholesky.diagonal(dim1=1, dim2=2).log().sum(1)
        self._log_normalisers = weights.log() - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)

    def __repr__(self) -> str:
        return f"GaussianMixture({len(self.weights)} components in {self.dim} dimensions)"

    def _points(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(x, torch.Tensor)
            or not x.dtype.is_floating_point
            or x.dim() != 2
            or x.shape[1] != self.dim
        ):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (N, {self.dim}), got {got}")
        return x.to(torch.float64)

    def noised(self, alpha_bar) -> "GaussianMixture":
        r"""q(x_t) for x_t = √ᾱ x_0 + √(1 − ᾱ) ε: the mixture with means √ᾱ m_k and covariances ᾱ C_k + (1 − ᾱ) I."""
        alpha_bar = float(alpha_bar)
        if not 0.0 < alpha_bar <= 1.0:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {alpha_bar}")
        identity = torch.eye(self.dim, dtype=torch.float64)
        covariances = alpha_bar * self.covariances + (1.0 - alpha_bar) * identity
        return GaussianMixture(self.weights, math.sqrt(alpha_bar) * self.means, covariances)

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(x; m_k, C_k) for every point and component, (N, K)."""
        offsets = self._points(x)[:, None, :] - self.means
        mahalanobis = torch.einsum("nkd,kde,nke->nk", offsets, self._precisions, offsets)
        return self._log_normalisers - 0.5 * mahalanobis

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x), (N,)."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(k | x), the probability that component k produced x, (N, K)."""
        return torch.softmax(self.component_log_prob(x), dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""∇_x log q(x) = −Σ_k P(k | x) C_k⁻¹ (x − m_k), (N, D)."""
        x = self._points(x)
        pulls = torch.einsum("kde,nke->nkd", self._precisions, x[:, None, :] - self.means)
        return -(self.responsibilities(x)[:, :, None] * pulls).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` points (n, D): a component drawn by its weight, then a draw from that Gaussian."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        components = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn((int(n), self.dim), generator=generator, dtype=torch.float64)
        return self.means[components] + torch.einsum("nde,ne->nd", self._cholesky[components], z)

    def mean(self) -> torch.Tensor:
        """E[x], (D,)."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Cov[x] = Σ_k π_k (C_k + m_k m_kᵀ) − E[x] E[x]ᵀ, (D, D)."""
        outer = self.means[:, :, None] * self.means[:, None, :]
        second_moment = (self.weights[:, None, None] * (self.covariances + outer)).sum(0)
        return second_moment - self.mean()[:, None] * self.mean()[None, :]


def toy_mixture() -> GaussianMixture:
    """The course's 2-D toy: six elongated Gaussians on a ring of radius 0.7, weights 0.25, 0.1, 0.2, 0.1, 0.25, 0.1."""
    angles = torch.arange(6, dtype=torch.float64) * (2 * math.pi / 6) + math.pi / 2
    radial = torch.stack([angles.cos(), angles.sin()], dim=1)
    tangent = torch.stack([-angles.sin(), angles.cos()], dim=1)
    along, across = 0.15, 0.05  # standard deviations along the ring and across it
    covariances = (
        along**2 * tangent[:, :, None] * tangent[:, None, :]
        + across**2 * radial[:, :, None] * radial[:, None, :]
    )
    weights = torch.tensor([0.25, 0.1, 0.2, 0.1, 0.25, 0.1], dtype=torch.float64)
    return GaussianMixture(weights, 0.7 * radial, covariances)


# %% [markdown]
# **Check — the noised marginal.** Noise toy points with `q_sample` ([chapter 02](02_forward_process.py)) and compare them with points
# drawn directly from `mixture.noised(ᾱ_t)`: the same mean, the same covariance, and the same average
# log-density $\mathbb E[\log q(x_t)]$ under the exact formula. Each comparison allows four standard errors of
# the Monte-Carlo estimate. Had `noised` scaled the means by $\bar\alpha_t$ instead of $\sqrt{\bar\alpha_t}$, or
# left out the $(1-\bar\alpha_t) I$, the log-densities would disagree by far more.

# %%
mixture = toy_mixture()
n_points = PROFILE.theory_points
generator = torch.Generator().manual_seed(1)
print(mixture, "weights", mixture.weights.tolist())
marginal_rows = []
for t in (0, 100, 300, 999):
    exact = mixture.noised(alpha_bars64[t])
    x0 = mixture.sample(n_points, generator)
    noised_points = q_sample(
        scheduler, x0, t, torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    )
    direct_points = exact.sample(n_points, generator)
    log_q_noised, log_q_direct = exact.log_prob(noised_points), exact.log_prob(direct_points)
    standard_error = math.sqrt((log_q_noised.var() + log_q_direct.var()).item() / n_points)
    gap = (log_q_noised.mean() - log_q_direct.mean()).item()
    mean_error = (noised_points.mean(0) - exact.mean()).abs().max().item()
    covariance_error = (torch.cov(noised_points.T) - exact.covariance()).abs().max().item()
    print(
        f"t = {t:3d}: E log q(x_t) {log_q_noised.mean():+.3f} (q_sample) vs {log_q_direct.mean():+.3f} (exact draws), "
        f"gap {gap:+.3f} ± {standard_error:.3f}; max |mean error| {mean_error:.3f}, max |covariance error| {covariance_error:.3f}"
    )
    assert abs(gap) < 4 * standard_error
    assert mean_error < 4 * math.sqrt(exact.covariance().diagonal().max().item() / n_points)
    assert covariance_error < 4 * 2 * exact.covariance().diagonal().max().item() / math.sqrt(n_points)

# %% [markdown]
# The forward process on the toy: points noised with `q_sample` at six noise levels, over the contours of the
# exact density $q(x_t)$. The six islands merge and shrink towards the origin while the noise grows, until
# $x_t$ is a standard normal cloud. The cell after the figure checks the two things it shows: how much of
# $q(x_t)$ the islands still explain, and that the last panel is $\mathcal N(0, I)$.

# %%
show_at = [0, 50, 100, 200, 400, 999]
grid_axis = torch.linspace(-2.5, 2.5, 121, dtype=torch.float64)
grid_x, grid_y = torch.meshgrid(grid_axis, grid_axis, indexing="xy")
grid_points = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def draw_density(ax, density: "GaussianMixture", points: torch.Tensor, title: str) -> None:
    """Scatter ``points`` over the contours of ``density``'s log-density."""
    log_density = density.log_prob(grid_points).reshape(grid_x.shape).clamp(min=-8)
    ax.contour(grid_x, grid_y, log_density, levels=8, linewidths=0.6, cmap="viridis")
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, color="black")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


forward_x0 = mixture.sample(min(n_points, 2000), torch.Generator().manual_seed(2))
forward_noise = torch.randn(forward_x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
fig, axes = plt.subplots(1, len(show_at), figsize=(2.3 * len(show_at), 2.6))
for ax, t in zip(axes, show_at, strict=True):
    points = q_sample(scheduler, forward_x0, t, forward_noise)
    draw_density(ax, mixture.noised(alpha_bars64[t]), points, f"t = {t}, ᾱ = {alpha_bars64[t]:.3f}")
fig.tight_layout()
save_figure(fig, "03_toy_forward")
plt.show()

# %%
# How many of the six islands can still be told apart: the average of max_k P(k | x_t) (1 = always sure)
for t in show_at:
    points = q_sample(scheduler, forward_x0, t, forward_noise)
    certainty = mixture.noised(alpha_bars64[t]).responsibilities(points).max(1).values.mean().item()
    print(f"t = {t:3d}: average max_k P(k | x_t) = {certainty:.3f}")
last = q_sample(scheduler, forward_x0, T - 1, forward_noise)
print(f"t = {T - 1}: mean {last.mean(0).tolist()}, covariance {torch.cov(last.T).flatten().tolist()}")
first_certainty = (
    mixture.responsibilities(q_sample(scheduler, forward_x0, 0, forward_noise)).max(1).values.mean()
)
assert first_certainty > 0.95  # t = 0: every point still belongs clearly to one island
assert (last.mean(0).abs() < 4 / math.sqrt(len(last))).all()  # t = 999: a standard normal cloud
assert (torch.cov(last.T) - torch.eye(2, dtype=torch.float64)).abs().max() < 8 / math.sqrt(len(last))

# %% [markdown]
# ### Try it: the forward process, with a slider
#
# Move the slider (in JupyterLab) to see the same noised points and the exact density at any $t$.


# %%
def show_forward(t: int = 150) -> None:
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    points = q_sample(scheduler, forward_x0, t, forward_noise)
    draw_density(ax, mixture.noised(alpha_bars64[t]), points, f"t = {t}")
    plt.show()


forward_slider = widgets.interactive(show_forward, t=widgets.IntSlider(value=150, min=0, max=T - 1, step=1))
display(forward_slider)
assert forward_slider.children[0].max == T - 1

# %% [markdown]
# ## 2. The posterior $q(x_{t-1} \mid x_t, x_0)$, by completing the square
#
# The reverse step needs the distribution of the less noisy $x_{t-1}$ given the noisier $x_t$. On its own,
# $q(x_{t-1} \mid x_t)$ depends on the whole data distribution (section 6 computes it for the toy). Given the
# clean $x_0$ as well, it is a Gaussian with a closed form. By Bayes' rule, and because the forward process is a
# Markov chain ($x_t$ depends on $x_0$ only through $x_{t-1}$),
#
# $$ q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)}
#    \;\propto\; \mathcal N\!\left(x_t;\ \sqrt{\alpha_t}\,x_{t-1},\ \beta_t I\right)\,
#    \mathcal N\!\left(x_{t-1};\ \sqrt{\bar\alpha_{t-1}}\,x_0,\ (1-\bar\alpha_{t-1}) I\right) , $$
#
# a product of two Gaussians in $x_{t-1}$ (the denominator does not depend on $x_{t-1}$). Each coordinate is
# independent, so write $y$ for one coordinate of $x_{t-1}$. The log of the product is, up to a constant,
#
# $$ -\frac12\left[ \frac{(x_t - \sqrt{\alpha_t}\,y)^2}{\beta_t} + \frac{(y - \sqrt{\bar\alpha_{t-1}}\,x_0)^2}{1-\bar\alpha_{t-1}} \right]
#    = -\frac12\left[ \underbrace{\left(\frac{\alpha_t}{\beta_t} + \frac{1}{1-\bar\alpha_{t-1}}\right)}_{\text{precision } 1/\tilde\beta_t} y^2
#    - 2 \underbrace{\left(\frac{\sqrt{\alpha_t}}{\beta_t}\,x_t + \frac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}\,x_0\right)}_{b} y \right] + \text{const} . $$
#
# A quadratic $-\frac12(y^2/\tilde\beta - 2by)$ is the log of a Gaussian with variance $\tilde\beta$ and mean
# $\tilde\beta b$: that is completing the square. The precision simplifies, because
# $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = \alpha_t - \bar\alpha_t + 1 - \alpha_t = 1 - \bar\alpha_t$:
#
# $$ \frac{1}{\tilde\beta_t} = \frac{\alpha_t(1-\bar\alpha_{t-1}) + \beta_t}{\beta_t(1-\bar\alpha_{t-1})} = \frac{1-\bar\alpha_t}{\beta_t(1-\bar\alpha_{t-1})}
#    \quad\Longrightarrow\quad \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t , $$
#
# $$ \tilde\mu_t(x_t, x_0) = \tilde\beta_t\, b = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
#    + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t . $$
#
# These are the formulas [chapter 01](01_noise_schedule.py) tabulated. At $t = 0$, $\bar\alpha_{-1} = 1$ gives $\tilde\beta_0 = 0$ and
# $\tilde\mu_0 = x_0$: given $x_0$, the step to the clean end is certain. The function below writes the result
# down for every $t$, in float64.


# %%
def posterior_coefficients(alpha_bars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(coefficient of x_0, coefficient of x_t, variance) of q(x_{t−1} | x_t, x_0) for every t, from ᾱ_t (float64)."""
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=alpha_bars.dtype), alpha_bars[:-1]])  # ᾱ_{−1} = 1
    betas = 1 - alpha_bars / alpha_bars_prev
    coef_x0 = alpha_bars_prev.sqrt() * betas / (1 - alpha_bars)
    coef_xt = (1 - betas).sqrt() * (1 - alpha_bars_prev) / (1 - alpha_bars)
    variance = (1 - alpha_bars_prev) / (1 - alpha_bars) * betas
    return coef_x0, coef_xt, variance


coef_x0, coef_xt, posterior_variance = posterior_coefficients(alpha_bars64)
print(
    f"t = 500: mean = {coef_x0[500]:.5f} x_0 + {coef_xt[500]:.5f} x_t, variance {posterior_variance[500]:.6f}"
)

# %% [markdown]
# **Check 1 — the square, completed by the computer.** Take the log of the product of the two Gaussian
# densities with `torch.distributions.Normal`, evaluate it at $y = -1, 0, 1$ for some $x_t$ and $x_0$, and fit
# the parabola through the three values. Its curvature is the precision and its vertex the mean; no formula from
# above is used. They must match the closed form at every $t = 1, \dots, T-1$ to float64 precision.

# %%
x_t_value, x0_value = 0.3, -0.8
y = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
alphas64 = alpha_bars64 / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars64[:-1]])
fitted_precision, fitted_mean = [], []
for t in range(1, T):
    log_product = torch.distributions.Normal(alphas64[t].sqrt() * y, (1 - alphas64[t]).sqrt()).log_prob(
        torch.tensor(x_t_value, dtype=torch.float64)
    ) + torch.distributions.Normal(
        alpha_bars64[t - 1].sqrt() * x0_value, (1 - alpha_bars64[t - 1]).sqrt()
    ).log_prob(y)
    curvature = log_product[0] + log_product[2] - 2 * log_product[1]  # second difference = −precision
    slope = (log_product[2] - log_product[0]) / 2  # derivative at y = 0 = precision · mean
    fitted_precision.append(-curvature)
    fitted_mean.append(slope / -curvature)
fitted_precision, fitted_mean = torch.stack(fitted_precision), torch.stack(fitted_mean)
closed_mean = coef_x0[1:] * x0_value + coef_xt[1:] * x_t_value
variance_error = ((1 / fitted_precision - posterior_variance[1:]) / posterior_variance[1:]).abs().max().item()
mean_error = (fitted_mean - closed_mean).abs().max().item()
print(
    f"t = 1..{T - 1}: max relative error of the variance {variance_error:.1e}, max error of the mean {mean_error:.1e}"
)
assert variance_error < 1e-8 and mean_error < 1e-8

# %% [markdown]
# **Check 2 — against simulated chains.** Draw $x_0$ from the toy, $x_{t-1}$ from `q_sample` and then $x_t$ from
# one forward step `q_step`, as the chain does. If $q(x_{t-1} \mid x_t, x_0)$ is the Gaussian above, then regressing
# $x_{t-1}$ on $x_t$ and $x_0$ by least squares recovers the two mean coefficients, and the variance of the
# residual is $\tilde\beta_t$. The regression knows nothing about the formula. Its coefficients come with standard
# errors; the cell also compares the closed form with `ddpm_lib`'s tables (`scheduler.posterior_mean_coef_x0`,
# `posterior_mean_coef_xt`, `posterior_variances`, float32).

# %%
n_chains = PROFILE.monte_carlo_samples
generator = torch.Generator().manual_seed(4)
print(f"{n_chains} chains; coefficient (regression ± standard error | closed form | ddpm_lib table)")
for t in (1, 10, 100, 500, 999):
    x0 = mixture.sample(n_chains, generator).flatten()  # both coordinates, pooled: the step is per coordinate
    x_prev = q_sample(
        scheduler, x0[:, None], t - 1, torch.randn((len(x0), 1), generator=generator, dtype=torch.float64)
    )
    x_t = q_step(scheduler, x_prev, t, torch.randn(x_prev.shape, generator=generator, dtype=torch.float64))
    design = torch.stack([x0, x_t[:, 0], torch.ones_like(x0)], dim=1)
    solution = torch.linalg.lstsq(design, x_prev[:, 0:1]).solution[:, 0]
    residual = x_prev[:, 0] - design @ solution
    residual_variance = residual.var().item()
    standard_errors = (residual_variance * torch.linalg.inv(design.T @ design).diagonal()).sqrt()
    tables = (
        scheduler.posterior_mean_coef_x0[t],
        scheduler.posterior_mean_coef_xt[t],
        scheduler.posterior_variances[t],
    )
    closed = (coef_x0[t], coef_xt[t], posterior_variance[t])
    print(
        f"t = {t:3d}: x_0 {solution[0]:.4f} ± {standard_errors[0]:.4f} | {closed[0]:.4f} | {tables[0]:.4f};  "
        f"x_t {solution[1]:.4f} ± {standard_errors[1]:.4f} | {closed[1]:.4f} | {tables[1]:.4f};  "
        f"variance {residual_variance:.3e} | {closed[2]:.3e} | {tables[2]:.3e}"
    )
    assert (
        abs(solution[0] - closed[0]) < 4 * standard_errors[0]
        and abs(solution[1] - closed[1]) < 4 * standard_errors[1]
    )
    assert abs(solution[2]) < 4 * standard_errors[2]  # no intercept
    assert abs(residual_variance / closed[2] - 1) < 4 * math.sqrt(2 / len(x0))
    for table, value in zip(tables, closed, strict=True):
        assert math.isclose(table.item(), value.item(), rel_tol=1e-6)

# %% [markdown]
# ## 3. The variational bound
#
# In this section we count steps as the DDPM paper does, because the terms of the bound carry its names: $x_0$ is
# the data and $x_1, \dots, x_T$ are the noisy images, so the paper's $x_t$ is the code's index $t-1$
# (`q_sample(scheduler, x0, t - 1, noise)`).
#
# **The model.** The reverse process is a Markov chain that starts from noise and takes Gaussian steps,
#
# $$ p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^{T} p_\theta(x_{t-1} \mid x_t), \qquad p(x_T) = \mathcal N(0, I), \qquad
#    p_\theta(x_{t-1} \mid x_t) = \mathcal N\!\left(\mu_\theta(x_t, t),\ \sigma_t^2 I\right) , $$
#
# and the probability it gives a data point is the integral over every path that ends there,
# $p_\theta(x_0) = \int p_\theta(x_{0:T})\, dx_{1:T}$, which nobody can compute for a network. **The bound** gets
# around the integral by importance sampling with the forward process as the proposal, and Jensen's inequality
# ($\log \mathbb E[Z] \ge \mathbb E[\log Z]$):
#
# $$ -\log p_\theta(x_0) = -\log \mathbb E_{q(x_{1:T} \mid x_0)}\!\left[\frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right]
#    \;\le\; \mathbb E_{q}\!\left[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right] =: L . $$
#
# The gap is $\mathrm{KL}\big(q(x_{1:T} \mid x_0)\,\|\,p_\theta(x_{1:T} \mid x_0)\big) \ge 0$: the bound is tight exactly
# when the model's distribution of the paths that end at $x_0$ is the forward process's,
# $p_\theta(x_{1:T} \mid x_0) = q(x_{1:T} \mid x_0)$.
#
# **The split.** Both chains are products of one-step factors, so $L$ is a sum of log-ratios, one per step:
#
# $$ L = \mathbb E_q\!\left[-\log p(x_T) - \sum_{t=1}^{T} \log \frac{p_\theta(x_{t-1} \mid x_t)}{q(x_t \mid x_{t-1})}\right] . $$
#
# In each ratio the two densities concern different variables ($x_{t-1}$ above, $x_t$ below), so no term is a KL yet.
# Turn the forward factors around. Because the forward process is Markov, $q(x_t \mid x_{t-1}) = q(x_t \mid x_{t-1}, x_0)$,
# and the joint of two consecutive steps given $x_0$ factors both ways,
# $q(x_{t-1}, x_t \mid x_0) = q(x_{t-1} \mid x_0)\, q(x_t \mid x_{t-1}) = q(x_t \mid x_0)\, q(x_{t-1} \mid x_t, x_0)$. So for every
# $t \ge 2$ (Bayes' rule, as in section 2),
# $q(x_t \mid x_{t-1}) = q(x_{t-1} \mid x_t, x_0)\, q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$. The ratios telescope,
# $\prod_{t=2}^{T} q(x_t \mid x_0)/q(x_{t-1} \mid x_0) = q(x_T \mid x_0)/q(x_1 \mid x_0)$, so
#
# $$ q(x_{1:T} \mid x_0) = q(x_T \mid x_0) \prod_{t=2}^{T} q(x_{t-1} \mid x_t, x_0) . $$
#
# Put it into $L$ (the $t = 1$ factor $q(x_1 \mid x_0)$ cancels against the telescoped denominator):
#
# $$ L = \mathbb E_q\!\left[\log \frac{q(x_T \mid x_0)}{p(x_T)} + \sum_{t=2}^{T} \log \frac{q(x_{t-1} \mid x_t, x_0)}{p_\theta(x_{t-1} \mid x_t)}
#    - \log p_\theta(x_0 \mid x_1)\right] . $$
#
# Now each log-ratio compares two densities of the same variable, and its expectation under the first one (take the
# expectation over $x_{t-1}$ given $x_t$ and $x_0$ first, then over $x_t$) is a KL divergence:
#
# $$ L = \underbrace{\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
#    + \sum_{t=2}^{T} \underbrace{\mathbb E_{q(x_t \mid x_0)}\,\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
#    \ \underbrace{-\ \mathbb E_{q(x_1 \mid x_0)} \log p_\theta(x_0 \mid x_1)}_{L_0} . $$
#
# $L_T$ has no parameters: [chapter 01](01_noise_schedule.py) computed it (a few hundredths of a nat per digit). Each $L_{t-1}$ compares the
# reverse step with the posterior of section 2, and $L_0$ is the **decoder**: how well the last step explains the
# data. In the code, $L_t$ for $t = 0, \dots, T-1$ is the term whose network call is at the code's timestep $t$.
#
# **Check — the telescoping, along a path.** The identity above holds for every path, not just on average: along a
# simulated chain, $\sum_t \log q(x_t \mid x_{t-1})$ must equal $\log q(x_T \mid x_0) + \sum_{t \ge 2} \log q(x_{t-1} \mid x_t, x_0)$
# with the posterior of section 2 (all 1000 steps, float64). Section 4 checks the whole split a second way, once there
# is a network: the average of the first form of $L$ over simulated paths against the sum of the KL terms.


# %%
def normal_log_density(x: torch.Tensor, mean: torch.Tensor, variance) -> torch.Tensor:
    """log N(x; mean, variance · I), summed over the last dimension."""
    variance = torch.as_tensor(variance, dtype=torch.float64)
    return (-0.5 * (x - mean) ** 2 / variance - 0.5 * torch.log(2 * math.pi * variance)).sum(-1)


generator = torch.Generator().manual_seed(5)
x0 = mixture.sample(8, generator)
path = [x0]  # path[i] is the paper's x_i: x_0, x_1, ..., x_T
for t in range(T):  # code index t makes the paper's x_{t+1}
    path.append(
        q_step(scheduler, path[-1], t, torch.randn(x0.shape, generator=generator, dtype=torch.float64))
    )
forward_log = sum(
    normal_log_density(path[i], alphas64[i - 1].sqrt() * path[i - 1], 1 - alphas64[i - 1])
    for i in range(1, T + 1)
)
split_log = normal_log_density(path[T], alpha_bars64[T - 1].sqrt() * x0, 1 - alpha_bars64[T - 1])
for i in range(2, T + 1):  # q(x_{i-1} | x_i, x_0): the code's tables at index i - 1
    mean = coef_x0[i - 1] * x0 + coef_xt[i - 1] * path[i]
    split_log = split_log + normal_log_density(path[i - 1], mean, posterior_variance[i - 1])
relative = ((forward_log - split_log) / forward_log.abs()).abs().max().item()
print(f"log q(x_1:T | x_0) along 8 paths: {[round(v, 2) for v in forward_log.tolist()]}")
print(f"max relative difference between the forward product and the telescoped product: {relative:.1e}")
assert relative < 1e-9

# %% [markdown]
# ### The KL divergence between two Gaussians
#
# Every term but $L_0$ is a KL divergence between Gaussians, which has a closed form. For one coordinate,
# $\log \mathcal N(x; m, v) = -\frac12 \log(2\pi v) - (x-m)^2/(2v)$, and under $x \sim \mathcal N(m_1, v_1)$,
# $\mathbb E[(x - m_2)^2] = v_1 + (m_1 - m_2)^2$. So
#
# $$ \mathrm{KL}\big(\mathcal N(m_1, v_1)\,\|\,\mathcal N(m_2, v_2)\big)
#    = \mathbb E\!\left[\log \mathcal N(x; m_1, v_1) - \log \mathcal N(x; m_2, v_2)\right]
#    = \frac12\left[\log\frac{v_2}{v_1} + \frac{v_1 + (m_1 - m_2)^2}{v_2} - 1\right] , $$
#
# and a KL between Gaussians with diagonal covariances is the sum over coordinates.


# %%
#| export
def _float64(*values) -> list[torch.Tensor]:
    return [torch.as_tensor(value, dtype=torch.float64) for value in values]


def gaussian_kl(mean_1, var_1, mean_2, var_2) -> torch.Tensor:
    r"""KL(N(mean_1, var_1) ‖ N(mean_2, var_2)) per coordinate, in nats, float64:

    ½ [log(v₂ / v₁) + (v₁ + (m₁ − m₂)²) / v₂ − 1]. Arguments broadcast; variances must be positive.
    """
    mean_1, var_1, mean_2, var_2 = _float64(mean_1, var_1, mean_2, var_2)
    for name, variance in (("var_1", var_1), ("var_2", var_2)):
        if not bool((variance > 0).all()):
            raise ValueError(f"{name} must be positive, got a smallest value of {variance.min().item()}")
    return 0.5 * (torch.log(var_2 / var_1) + (var_1 + (mean_1 - mean_2) ** 2) / var_2 - 1.0)


# %%
generator = torch.Generator().manual_seed(6)
means_1, means_2 = (
    torch.randn(5, generator=generator, dtype=torch.float64),
    torch.randn(5, generator=generator, dtype=torch.float64),
)
variances_1, variances_2 = (
    torch.rand(5, generator=generator, dtype=torch.float64) + 0.1,
    torch.rand(5, generator=generator, dtype=torch.float64) + 0.1,
)
ours = gaussian_kl(means_1, variances_1, means_2, variances_2)
torch_kl = torch.distributions.kl_divergence(
    torch.distributions.Normal(means_1, variances_1.sqrt()),
    torch.distributions.Normal(means_2, variances_2.sqrt()),
)
draws = means_1 + variances_1.sqrt() * torch.randn((200_000, 5), generator=generator, dtype=torch.float64)
log_ratio = torch.distributions.Normal(means_1, variances_1.sqrt()).log_prob(
    draws
) - torch.distributions.Normal(means_2, variances_2.sqrt()).log_prob(draws)
monte_carlo, monte_carlo_se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(draws))
print("closed form   ", [round(v, 4) for v in ours.tolist()])
print("torch         ", [round(v, 4) for v in torch_kl.tolist()])
print(
    "Monte Carlo   ",
    [round(v, 4) for v in monte_carlo.tolist()],
    "±",
    [round(v, 4) for v in monte_carlo_se.tolist()],
)
assert torch.allclose(ours, torch_kl, rtol=1e-12)
assert ((ours - monte_carlo).abs() < 4 * monte_carlo_se).all()

# %% [markdown]
# ### Matching the posterior mean is predicting $\varepsilon$
#
# DDPM fixes the reverse variances, $\sigma_t^2 = \tilde\beta_t$ (the sampler of [chapter 06](06_sampling.py)). Then both Gaussians in
# $L_{t-1}$ have the same variance, the log and the $-1$ of the KL cancel, and
#
# $$ L_{t-1} = \mathbb E_q\!\left[\frac{\lVert \tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t) \rVert^2}{2\sigma_t^2}\right] . $$
#
# The best $\mu_\theta$ is the posterior mean itself, but it needs the unknown $x_0$. The network sees only $x_t$, so the
# best it can do, averaged over the $x_0$ that could have produced $x_t$, is $\mathbb E[\tilde\mu_t(x_t, x_0) \mid x_t]$, and
# because $\tilde\mu_t$ is linear in $x_0$ that is $\tilde\mu_t(x_t, \mathbb E[x_0 \mid x_t])$: the posterior mean with the best
# estimate of the clean point in place of the clean point (section 5 computes $\mathbb E[x_0 \mid x_t]$ exactly for the toy).
# So give the network the job of estimating $x_0$, through the noise: $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ gives
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ for a predicted noise
# $\hat\varepsilon = \varepsilon_\theta(x_t, t)$, and $\mu_\theta(x_t, t) = \tilde\mu_t(x_t, \hat x_0)$. Only the $x_0$ part of
# $\tilde\mu_t$ differs between the two means:
#
# $$ \tilde\mu_t - \mu_\theta = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,(x_0 - \hat x_0)
#    = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\cdot\frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t}}\,(\hat\varepsilon - \varepsilon)
#    = \frac{\beta_t}{\sqrt{\alpha_t}\,\sqrt{1-\bar\alpha_t}}\,(\hat\varepsilon - \varepsilon) , $$
#
# using $\bar\alpha_t = \alpha_t \bar\alpha_{t-1}$. Hence each term of the bound is a weighted squared error of the noise:
#
# $$ L_{t-1} = \lambda_t\ \mathbb E\,\lVert \varepsilon - \varepsilon_\theta(x_t, t) \rVert^2, \qquad
#    \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)} \overset{\sigma_t^2 = \tilde\beta_t}{=} \frac{\beta_t}{2\alpha_t(1-\bar\alpha_{t-1})}
#    = \frac12\left(\mathrm{SNR}_{t-1} - \mathrm{SNR}_t\right)\frac{1-\bar\alpha_t}{\bar\alpha_t} . $$
#
# (The letter $\lambda_t$ is the bound's weight in this chapter only; [chapter 08](08_fast_sampling.py) and the notation
# page use $\lambda$ for half the log-SNR.) The last form, through the signal-to-noise ratio, is how
# {cite:t}`kingma2021vdm` write it. Written out,
# $\mu_\theta = (x_t - \beta_t\,\hat\varepsilon/\sqrt{1-\bar\alpha_t})/\sqrt{\alpha_t}$: DDPM's Algorithm 2, the sampler
# of [chapter 06](06_sampling.py) {cite:p}`ho2020ddpm`.
#
# **Check.** With random $x_0$, $\varepsilon$ and $\hat\varepsilon$ at many $t$ (the code's index), compute $L_{t-1}$ three
# ways: `gaussian_kl` of the two means, $\lambda_t\lVert\varepsilon - \hat\varepsilon\rVert^2$, and the SNR form; and check
# Algorithm 2's mean against $\tilde\mu_t(x_t, \hat x_0)$.


# %%
def eps_weight(alpha_bars: torch.Tensor) -> torch.Tensor:
    """λ_t = β_t / (2 α_t (1 − ᾱ_{t−1})): the bound's weight on ‖ε − ε̂‖² at each t ≥ 1 (σ_t² = β̃_t), float64."""
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=alpha_bars.dtype), alpha_bars[:-1]])
    alphas = alpha_bars / alpha_bars_prev
    weights = (1 - alphas) / (2 * alphas * (1 - alpha_bars_prev))
    weights[0] = math.nan  # t = 0 is the decoder, not a KL term
    return weights


lambdas = eps_weight(alpha_bars64)
snr64 = alpha_bars64 / (1 - alpha_bars64)
generator = torch.Generator().manual_seed(7)
worst = {"kl vs weight": 0.0, "kl vs SNR form": 0.0, "Algorithm 2": 0.0}
for t in (1, 2, 10, 100, 500, 999):
    x0, eps, eps_hat = (torch.randn((4, 2), generator=generator, dtype=torch.float64) for _ in range(3))
    x_t = alpha_bars64[t].sqrt() * x0 + (1 - alpha_bars64[t]).sqrt() * eps
    x0_hat = (x_t - (1 - alpha_bars64[t]).sqrt() * eps_hat) / alpha_bars64[t].sqrt()
    true_mean, model_mean = coef_x0[t] * x0 + coef_xt[t] * x_t, coef_x0[t] * x0_hat + coef_xt[t] * x_t
    kl = gaussian_kl(true_mean, posterior_variance[t], model_mean, posterior_variance[t]).sum(1)
    weighted = lambdas[t] * ((eps - eps_hat) ** 2).sum(1)
    snr_form = 0.5 * (snr64[t - 1] - snr64[t]) * ((x0 - x0_hat) ** 2).sum(1)
    algorithm_2 = (x_t - (1 - alphas64[t]) / (1 - alpha_bars64[t]).sqrt() * eps_hat) / alphas64[t].sqrt()
    worst["kl vs weight"] = max(worst["kl vs weight"], ((kl - weighted) / kl).abs().max().item())
    worst["kl vs SNR form"] = max(worst["kl vs SNR form"], ((kl - snr_form) / kl).abs().max().item())
    worst["Algorithm 2"] = max(worst["Algorithm 2"], (algorithm_2 - model_mean).abs().max().item())
print({name: f"{value:.1e}" for name, value in worst.items()})
print(f"lambda_t at t = 1, 10, 100, 999: {[f'{lambdas[t]:.3g}' for t in (1, 10, 100, 999)]}")
assert max(worst.values()) < 1e-8

# %% [markdown]
# ### $L_\text{simple}$: the bound with its weights dropped, and min-SNR
#
# The bound has $T - 1$ KL terms (the paper's $t = 2, \dots, T$). In the code's counting they are the steps from
# $t = 1, \dots, T-1$, and their sum is $T - 1$ times an expectation over a uniform $t$ of those:
# $(T-1)\,\mathbb E_{t \sim \mathcal U\{1..T-1\},\, x_0,\, \varepsilon}\big[\lambda_t \lVert \varepsilon - \varepsilon_\theta(x_t, t)\rVert^2\big]$
# (without $L_T$ and $L_0$). {cite:t}`ho2020ddpm` drop the weight and train on
#
# $$ L_\text{simple} = \mathbb E_{t \sim \mathcal U\{0..T-1\},\ x_0,\ \varepsilon}\,\lVert \varepsilon - \varepsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t)\rVert^2 , $$
#
# the loss [chapter 05](05_training.py) uses (per pixel, a mean instead of a sum). Its $t$ runs from 0: the code's $t = 0$,
# which has no KL term, stands in for the decoder $L_0$, whose mean is also the network's $\hat x_0$ from the least noisy
# input. It has the same minimiser at every $t$
# (the true conditional mean of $\varepsilon$, section 5), since each $t$ is its own regression problem, but it spends
# the network's capacity differently: $\lambda_t$ is largest at small $t$, where the noise is nearly invisible and
# predicting it is hard and matters little for how samples look. Relative to the bound, $L_\text{simple}$ moves weight
# to larger $t$; Ho et al. found that this gives better samples and a worse bound. **Min-SNR-$\gamma$ weighting**
# {cite:p}`hang2023minsnr`, which [chapter 11](11_putting_together.py)'s quick recipe and the shipped weights use, multiplies each term by
# $w_t = \min(\mathrm{SNR}_t, \gamma)/\mathrm{SNR}_t$ ($\gamma = 5$): 1 where $\mathrm{SNR}_t \le 5$, less and less at the
# smallest $t$. It moves weight further from the bound's small-$t$ terms, which shows in the bound of section 7.
#
# The three weightings on one plot, each scaled to 1 at its largest $t$:

# %%
min_snr_weights = snr64.clamp(max=5.0) / snr64
timesteps = torch.arange(1, T)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.semilogy(timesteps, lambdas[1:] / lambdas[-1], label=r"bound: $\lambda_t$")
ax.semilogy(timesteps, torch.ones(T - 1), label=r"$L_\mathrm{simple}$: 1")
ax.semilogy(timesteps, min_snr_weights[1:], label=r"min-SNR-5: $\min(\mathrm{SNR}_t, 5)/\mathrm{SNR}_t$")
ax.set_xlabel("t")
ax.set_ylabel("weight of $\\|\\varepsilon - \\hat\\varepsilon\\|^2$ (relative)")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "03_loss_weights")
plt.show()

# %%
t_min_snr = int(torch.nonzero(snr64 <= 5)[0])
print(f"bound weight lambda_1 / lambda_999 = {lambdas[1] / lambdas[-1]:.0f}")
print(f"min-SNR-5 weight: {min_snr_weights[1]:.2e} at t = 1, 1 from t = {t_min_snr} on (SNR <= 5)")
assert lambdas[1] == lambdas[1:].max()  # the bound weighs the first step most ...
assert lambdas[1] / lambdas[-1] > 50  # ... about 60 times more than the last
assert (min_snr_weights[t_min_snr:] == 1).all() and min_snr_weights[1] < 0.01


class OffByOne(nn.Module):
    """ε̂ = the true ε of x_t (for x0 = 0) + 1 in every coordinate: each image's squared error is exactly 1."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t / (1 - scheduler.alpha_bars64[t].float()).sqrt().view(-1, 1, 1, 1) + 1


# with an error of 1 everywhere, chapter 05's loss is the mean of the weights at the t it draws (t first, from the
# generator): the weights training applies must be the ones plotted above
images = torch.zeros(8192, 1, 1, 2)
applied = ddpm_loss(
    OffByOne(), scheduler, images, torch.Generator().manual_seed(30), weighting="min_snr"
).item()
drawn_t = torch.randint(0, T, (len(images),), generator=torch.Generator().manual_seed(30))
print(f"ddpm_loss(weighting='min_snr') with unit errors: {applied:.6f}; the plotted weights at its t: "
      f"{min_snr_weights[drawn_t].mean():.6f}")  # fmt: skip
assert abs(applied / min_snr_weights[drawn_t].mean().item() - 1) < 1e-4

# %% [markdown]
# ### The decoder $L_0$ for images, and computing the bound
#
# Pixels are not continuous: MNIST stores 256 grey levels, which the course maps to $x_0 \in [-1, 1]$. A continuous
# density of discrete data can be made arbitrarily large, so {cite:t}`ho2020ddpm` make the last step a
# **discretised Gaussian**: the probability of a pixel is the mass the Gaussian $\mathcal N(\mu_\theta(x_1, 1), \sigma_1^2)$
# puts on its bin, $[x_0 - \frac1{255}, x_0 + \frac1{255}]$, with the outermost bins stretched to $\mp\infty$, so the
# 256 probabilities sum to 1. Its variance cannot be $\tilde\beta$ at the last step, which is 0; Ho et al.'s code
# uses $\tilde\beta$ of the step before ($\sigma_1^2 = \tilde\beta_2$ in their counting, `posterior_variances[1]` in ours),
# and so do we. Continuous data (the toy) get the Gaussian density with the same $\sigma_1$ instead.
#
# The functions below compute one term $L_t$ of the bound for a batch (the code's $t$: 0 is the decoder, $t \ge 1$ the
# KL of the step from $t$ to $t - 1$), the prior term $L_T$, and the whole bound. The sum over $t$ can be enumerated
# (1000 network calls per sample) or estimated: draw $t$ uniformly from $1, \dots, T-1$ and multiply $L_t$ by $T - 1$,
# which is unbiased because $\mathbb E_t[(T-1) L_t] = \sum_{t=1}^{T-1} L_t$. Each of the $K$ draws (`t_samples`) also
# draws a fresh $x_1$ for the decoder, so the spread of the $K$ draws gives each sample's Monte-Carlo variance.


# %%
#| export
def gaussian_log_likelihood(x, mean, std) -> torch.Tensor:
    """log N(x; mean, std²) per coordinate, in nats, float64."""
    x, mean, std = _float64(x, mean, std)
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def _log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for lower < upper, accurate in both tails (the interval is mirrored into the left one)."""
    mirror = (lower + upper) > 0
    lower, upper = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log1p(-torch.exp(log_lower - log_upper))


def discretized_gaussian_log_likelihood(x0, mean, std, bins: int = 256) -> torch.Tensor:
    r"""log P(x0) per coordinate, in nats, float64, when a pixel is N(mean, std²) rounded to ``bins`` levels in [−1, 1].

    Ho et al.'s decoder: the mass of the bin [x0 − 1/(bins − 1), x0 + 1/(bins − 1)], the two outermost bins
    stretched to −∞ and +∞ so that the ``bins`` probabilities sum to 1. ``x0`` must lie on the grid of levels.
    """
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    x0, mean, std = _float64(x0, mean, std)
    if not bool((std > 0).all()):
        raise ValueError(f"std must be positive, got a smallest value of {std.min().item()}")
    levels = (x0 + 1) * (bins - 1) / 2
    if x0.numel() and (x0.min() < -1 or x0.max() > 1 or (levels - levels.round()).abs().max() > 1e-3):
        raise ValueError(
            f"x0 must hold values on the grid of {bins} levels in [-1, 1] (data scaled from 0..{bins - 1})"
        )
    half_bin = 1.0 / (bins - 1)
    lower = torch.where(levels.round() <= 0, -math.inf, (x0 - half_bin - mean) / std)
    upper = torch.where(levels.round() >= bins - 1, math.inf, (x0 + half_bin - mean) / std)
    return _log_normal_mass(lower, upper)


#: the decoders L_0 can use: Ho et al.'s discretised Gaussian (256-level images) or a Gaussian density (continuous data)
DECODERS = ("discretized", "gaussian")


def decoder_std(scheduler: NoiseSchedule) -> float:
    """σ_1 of the decoder p_θ(x_0 | x_1): √β̃ of the code's t = 1 (β̃ at t = 0 is 0), as in Ho et al.'s code."""
    if scheduler.num_timesteps < 2:
        raise ValueError("the bound needs a schedule of at least 2 timesteps")
    alpha_bars = scheduler.alpha_bars64
    return math.sqrt(float((1 - alpha_bars[0]) / (1 - alpha_bars[1]) * (1 - alpha_bars[1] / alpha_bars[0])))


def prior_term(scheduler: NoiseSchedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample of ``x0`` (B, ...), in nats (float64, exact)."""
    alpha_bar = scheduler.alpha_bars64[-1]
    x0 = x0.to(torch.float64)
    return gaussian_kl(alpha_bar.sqrt() * x0, 1 - alpha_bar, 0.0, 1.0).flatten(1).sum(1)


@torch.no_grad()
def bound_terms(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    t,
    noise: torch.Tensor,
    decoder: str = "discretized",
) -> torch.Tensor:
    r"""One term of the bound per sample, in nats (float64, (B,)), for x_t = q_sample(x0, t, noise).

    t ≥ 1: L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), p_θ = N(μ̃_t(x_t, x̂_0), β̃_t I) with x̂_0 from
    ε̂ from ``model(x_t, t)`` (converted by chapter 02's ``convert_prediction`` when the network predicts v or x_0);
    t = 0: L_0 = −log p_θ(x_0 | x_t), the ``decoder`` with mean x̂_0 and std :func:`decoder_std`.
    ``x0`` is (B, ...); ``t`` a (B,) tensor of integer timesteps (0..T−1, mixed as you like); ``noise`` like ``x0``.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, got {decoder!r}")
    t = scheduler.check_timesteps(t).to(x0.device)
    if t.dim() != 1 or len(t) != len(x0):
        raise ValueError(
            f"t must have shape ({len(x0)},), one timestep per sample of x0, got {tuple(t.shape)}"
        )
    x_t = q_sample(scheduler, x0.float(), t, noise.float())  # what the network sees, as in training
    output = model(x_t, t).to(torch.float64)
    x0, x_t = x0.to(torch.float64), x_t.to(torch.float64)
    alpha_bars = scheduler.alpha_bars64.to(x0.device)
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    alpha_bar, alpha_bar_prev = expand_like(alpha_bars[t], x0), expand_like(alpha_bars_prev[t], x0)
    eps_hat = convert_prediction(output, x_t, alpha_bars[t], prediction_of(model), "eps")
    beta = 1 - alpha_bar / alpha_bar_prev
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()
    coef_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
    coef_xt = (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
    true_mean, model_mean = coef_x0 * x0 + coef_xt * x_t, coef_x0 * x0_hat + coef_xt * x_t
    terms = torch.empty(len(x0), dtype=torch.float64, device=x0.device)
    step = t > 0
    if step.any():
        variance = ((1 - alpha_bar_prev) / (1 - alpha_bar) * beta)[step]
        terms[step] = gaussian_kl(true_mean[step], variance, model_mean[step], variance).flatten(1).sum(1)
    if (~step).any():
        log_likelihood = (
            discretized_gaussian_log_likelihood if decoder == "discretized" else gaussian_log_likelihood
        )
        terms[~step] = -log_likelihood(x0[~step], model_mean[~step], decoder_std(scheduler)).flatten(1).sum(1)
    return terms


@dataclass
class BoundEstimate:
    """The variational bound L = L_T + Σ_{t≥1} L_t + L_0 of each sample, in nats: (N,) float64 tensors.

    ``steps`` and ``decoder`` are estimates of Σ_{t=1}^{T−1} L_t and L_0; ``variance`` is the Monte-Carlo variance of
    each sample's ``total`` (None when every t was enumerated); ``dims`` the coordinates per sample.
    """

    total: torch.Tensor
    prior: torch.Tensor
    steps: torch.Tensor
    decoder: torch.Tensor
    variance: torch.Tensor | None
    dims: int

    def mean(self) -> float:
        """The bound averaged over the samples, in nats per sample."""
        return self.total.mean().item()

    def standard_error(self) -> float | None:
        """The Monte-Carlo standard error of :meth:`mean` for these samples (over t and the noise), in nats."""
        return None if self.variance is None else self.variance.sum().sqrt().item() / len(self.total)

    def bits_per_dim(self) -> float:
        """:meth:`mean` in bits per coordinate: nats / (dims · ln 2)."""
        return self.mean() / (self.dims * math.log(2))

    def bits_per_dim_standard_error(self) -> float | None:
        error = self.standard_error()
        return None if error is None else error / (self.dims * math.log(2))


@torch.no_grad()
def variational_bound(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    t_samples: int | None = None,
    generator: torch.Generator | None = None,
    decoder: str = "discretized",
    batch_size: int = 256,
) -> BoundEstimate:
    r"""The variational bound on −log p_θ(x0) of each sample of ``x0`` (B, ...) for the noise predictor ``model``.

    L_T is exact. ``t_samples=None`` enumerates t = 1..T−1 (one noise draw each) and draws L_0 once;
    ``t_samples=K`` (K ≥ 2) makes K draws per sample of (t ~ U{1..T−1}, noise, decoder noise), each giving the unbiased
    estimate L_T + L_0 + (T − 1) L_t, and returns their mean and its Monte-Carlo variance. Draws use ``generator``;
    the network sees ``batch_size`` rows at a time (float32).
    """
    if t_samples is not None and (
        isinstance(t_samples, bool) or not isinstance(t_samples, numbers.Integral) or t_samples < 2
    ):
        raise ValueError(f"t_samples must be None (enumerate every t) or an integer >= 2, got {t_samples!r}")
    if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point or x0.dim() < 2 or len(x0) == 0:
        raise ValueError("x0 must be a floating-point tensor of shape (B, ...) with B >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    steps_total = scheduler.num_timesteps - 1
    decoder_std(scheduler)  # checks T >= 2
    n = len(x0)
    draws = steps_total if t_samples is None else int(t_samples)
    if t_samples is None:
        timesteps = torch.arange(1, steps_total + 1).repeat(n)
    else:
        timesteps = torch.randint(1, steps_total + 1, (n * draws,), generator=generator)
    owners = torch.arange(n).repeat_interleave(draws)
    step_terms = torch.empty(n * draws, dtype=torch.float64)
    for start in range(0, n * draws, batch_size):
        rows = slice(start, start + batch_size)
        x = x0[owners[rows]]
        noise = torch.randn(x.shape, generator=generator).to(x0.device)  # CPU draws: any device, same numbers
        step_terms[rows] = bound_terms(model, scheduler, x, timesteps[rows], noise, decoder).cpu()
    decoder_draws = 1 if t_samples is None else draws
    decoder_owners = torch.arange(n).repeat_interleave(decoder_draws)
    decoder_terms = torch.empty(n * decoder_draws, dtype=torch.float64)
    for start in range(0, n * decoder_draws, batch_size):
        rows = slice(start, start + batch_size)
        x = x0[decoder_owners[rows]]
        noise = torch.randn(x.shape, generator=generator).to(x0.device)
        zeros = torch.zeros(len(x), dtype=torch.long)
        decoder_terms[rows] = bound_terms(model, scheduler, x, zeros, noise, decoder).cpu()
    prior = prior_term(scheduler, x0).cpu()
    dims = x0[0].numel()
    if t_samples is None:
        steps = step_terms.reshape(n, draws).sum(1)
        decoder_terms = decoder_terms.reshape(n)
        return BoundEstimate(prior + steps + decoder_terms, prior, steps, decoder_terms, None, dims)
    per_draw_steps = steps_total * step_terms.reshape(n, draws)
    per_draw = prior[:, None] + per_draw_steps + decoder_terms.reshape(n, draws)
    return BoundEstimate(
        per_draw.mean(1), prior, per_draw_steps.mean(1), decoder_terms.reshape(n, draws).mean(1),
        per_draw.var(1) / draws, dims,
    )  # fmt: skip


# %% [markdown]
# **Checks.** The 256 bin probabilities of the decoder sum to 1 for any mean and spread; the prior term matches
# [chapter 01](01_noise_schedule.py)'s number; and averaging the estimator over $t$ gives the enumerated sum. For that last check take a
# "network" that knows the answer up to a known error at each $t$, so that every $L_t$ is a fixed number: it computes
# the true $\varepsilon$ from $x_t$ (it is told $x_0$) and adds $0.01\,t$. Then $L_t = \lambda_t \cdot 2\,(0.01\,t)^2$ exactly,
# the enumerated sum is a number, and the estimator, drawn many times, must average to it.

# %%
levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
for mean, std in ((0.0, 0.01), (-0.99, 0.003), (0.7, 0.4), (1.3, 0.05)):
    mass = discretized_gaussian_log_likelihood(levels, mean, std).exp().sum().item()
    print(f"mean {mean:+.2f}, std {std}: total probability of the 256 levels {mass:.12f}")
    assert abs(mass - 1) < 1e-10
# each bin's probability, against differences of the normal CDF at the bin edges (midways between levels, ±∞ outside)
edges = torch.cat(
    [torch.tensor([-math.inf]), (levels[:-1] + levels[1:]) / 2, torch.tensor([math.inf])]
).double()
worst_bin = 0.0
for mean, std in ((0.3, 0.05), (-0.99, 0.003), (0.996, 0.01)):
    normal = torch.distributions.Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    )
    by_cdf = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])
    worst_bin = max(
        worst_bin, (discretized_gaussian_log_likelihood(levels, mean, std).exp() - by_cdf).abs().max().item()
    )
print(f"largest difference from the normal CDF's bin masses: {worst_bin:.1e}")
assert worst_bin < 1e-12
# the decoder's width is the posterior standard deviation of the code's t = 1 (section 2's table, and ddpm_lib's)
sigma_1 = decoder_std(scheduler)
print(f"decoder sigma_1 = {sigma_1:.5f}; sqrt(beta~) at t = 1: {posterior_variance[1].sqrt():.5f}")
assert math.isclose(sigma_1**2, posterior_variance[1].item(), rel_tol=1e-12)
assert math.isclose(sigma_1**2, scheduler.posterior_variances[1].item(), rel_tol=1e-5)
digits = load_mnist("heldout", verbose=False).tensors[0]
prior_per_digit = prior_term(scheduler, digits)
print(
    f"L_T per held-out digit: {prior_per_digit.min():.4f} .. {prior_per_digit.max():.4f} nats (chapter 01: < 0.05)"
)
assert prior_per_digit.max() < 0.05


class KnownErrorPredictor(nn.Module):
    """ε̂ = the true ε of x_t (computed from the x0 it is given) + 0.01 t: each L_t is a known number."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = scheduler.alpha_bars64[t][:, None]
        true_eps = (x_t.double() - alpha_bar.sqrt() * self.x0.double()) / (1 - alpha_bar).sqrt()
        return (true_eps + 0.01 * t[:, None]).to(x_t.dtype)


point = torch.tensor([[0.3, -0.2]])
oracle = KnownErrorPredictor(point)
enumerated = variational_bound(
    oracle, scheduler, point, None, torch.Generator().manual_seed(8), decoder="gaussian"
)
expected_steps = (lambdas[1:] * 2 * (0.01 * torch.arange(1, T, dtype=torch.float64)) ** 2).sum().item()
estimates = variational_bound(
    oracle, scheduler, point.expand(400, -1), 50, torch.Generator().manual_seed(9), "gaussian"
)
estimated_steps = estimates.steps.mean().item()
steps_se = estimates.steps.std().item() / math.sqrt(400)
print(f"sum of L_t over t = 1..{T - 1}: formula {expected_steps:.4f}, enumerated {enumerated.steps.item():.4f}, "
      f"estimator (400 x 50 draws) {estimated_steps:.4f} ± {steps_se:.4f}")  # fmt: skip
assert abs(enumerated.steps.item() - expected_steps) < 1e-3 * expected_steps
assert abs(estimated_steps - expected_steps) < 4 * steps_se

# %% [markdown]
# ## 4. The whole method on the toy: train, sample, measure
#
# Now the method end to end, on the toy. The network is a small multilayer perceptron $\varepsilon_\theta(x_t, t)$: the
# point and sinusoidal features of $t$ in, a predicted noise out. It trains on $L_\text{simple}$ with the course's
# schedule, and [chapter 06](06_sampling.py)'s sampler draws from it, through the same `generate` that samples digits (a
# "picture" of shape `(2,)` instead of `(1, 28, 28)`).


# %%
#| export
class ToyDenoiser(nn.Module):
    """A small noise predictor ε_θ(x_t, t) for points in ``dim`` dimensions: an MLP on [x_t, sinusoidal features of t]."""

    def __init__(self, dim: int = 2, hidden: int = 256, layers: int = 3, time_features: int = 32):
        super().__init__()
        for name, value in (
            ("dim", dim),
            ("hidden", hidden),
            ("layers", layers),
            ("time_features", time_features),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if time_features % 2:
            raise ValueError(
                f"time_features must be even (a sine and a cosine per frequency), got {time_features}"
            )
        half = time_features // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10_000.0) * torch.arange(half) / half))
        widths = [dim + time_features] + [hidden] * layers
        blocks = [
            module
            for a, b in zip(widths, widths[1:], strict=False)
            for module in (nn.Linear(a, b), nn.SiLU())
        ]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(torch.float32)[:, None] * self.frequencies
        features = torch.cat([x_t.to(torch.float32), angles.sin(), angles.cos()], dim=1)
        return self.net(features).to(x_t.dtype)


# %% [markdown]
# The training loop is $L_\text{simple}$, written out: a batch of points, a uniform $t$ and a fresh $\varepsilon$ per
# point, `q_sample`, and the squared error of the predicted noise. It keeps a copy of the weights at a few steps, for
# the bound below. ([Chapter 05](05_training.py)'s `ddpm_loss` computes the same loss for digits; the assertion checks they agree.)

# %%
train_steps = PROFILE.theory_train_steps
snapshot_steps = sorted({0, train_steps // 16, train_steps // 4, train_steps})
torch.manual_seed(10)
toy_model = ToyDenoiser()
optimizer = torch.optim.Adam(toy_model.parameters(), lr=1e-2)
lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train_steps)
generator = torch.Generator().manual_seed(11)
snapshots, losses = {}, []
for step in range(train_steps + 1):
    if step in snapshot_steps:
        snapshots[step] = {name: value.clone() for name, value in toy_model.state_dict().items()}
    if step == train_steps:
        break
    x0 = mixture.sample(512, generator).float()
    t = torch.randint(0, T, (len(x0),), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    loss = ((toy_model(q_sample(scheduler, x0, t, eps), t) - eps) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lr_schedule.step()
    losses.append(loss.item())
toy_model.eval()
print(f"{train_steps} steps of batch 512; L_simple over the first 10 / last 100 steps: "
      f"{sum(losses[:10]) / 10:.3f} / {sum(losses[-100:]) / 100:.3f}")  # fmt: skip

# %%
x0 = mixture.sample(256, torch.Generator().manual_seed(12)).float()
with torch.no_grad():
    theirs = ddpm_loss(toy_model, scheduler, x0, torch.Generator().manual_seed(13))
    draw = torch.Generator().manual_seed(13)
    t = torch.randint(0, T, (len(x0),), generator=draw)
    eps = torch.randn(x0.shape, generator=draw)
    ours = ((toy_model(q_sample(scheduler, x0, t, eps), t) - eps) ** 2).mean()
print(f"L_simple on one batch: this loop {ours:.6f}, chapter 05's ddpm_loss {theirs:.6f}")
assert torch.allclose(ours, theirs, rtol=1e-6)
assert sum(losses[-100:]) / 100 < 0.5 * sum(losses[:10]) / 10

# %% [markdown]
# **Sampling with the course's sampler.** `generate(..., sampler="ddpm", image_shape=(2,))` runs [chapter 06](06_sampling.py)'s
# ancestral step over all 1000 timesteps, from $x_T \sim \mathcal N(0, I)$. We run it twice: with the trained network,
# and with the *exact* noise predictor of the toy, $\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q(x_t)$
# (section 5 derives why this is the best possible $\hat\varepsilon$). With the exact predictor, the only errors left are
# the sampler's own, so its samples test the sampler; with the network, they test the training.


# %%
#| export
class ExactDenoiser(nn.Module):
    r"""The ideal noise predictor for data drawn from ``mixture``: ε*(x_t, t) = E[ε | x_t] = −√(1 − ᾱ_t) ∇ log q(x_t).

    Called like the course's networks, ``model(x_t, t)`` with x_t (B, D) and t (B,) integer timesteps; returns a
    tensor like x_t (computed in float64).
    """

    def __init__(self, mixture: GaussianMixture, scheduler: NoiseSchedule):
        super().__init__()
        self.mixture, self.scheduler = mixture, scheduler
        self._marginals: dict[int, GaussianMixture] = {}

    def marginal(self, t: int) -> GaussianMixture:
        """q(x_t), the noised mixture at timestep ``t``."""
        t = int(self.scheduler.check_timesteps(t))
        if t not in self._marginals:
            self._marginals[t] = self.mixture.noised(self.scheduler.alpha_bars64[t])
        return self._marginals[t]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self.scheduler.check_timesteps(t).expand(len(x_t))
        eps = torch.empty(x_t.shape, dtype=torch.float64)
        for value in t.unique().tolist():
            rows = t == value
            noise_scale = math.sqrt(1.0 - float(self.scheduler.alpha_bars64[value]))
            eps[rows] = -noise_scale * self.marginal(value).score(x_t[rows])
        return eps.to(x_t.dtype)


# %%
exact_model = ExactDenoiser(mixture, scheduler)
record_at = [999, 600, 300, 150, 50, 0]


class TrajectoryRecorder:
    """Keeps the points entering the step at each t of ``record_at`` and, for the animation, every 25th step."""

    def __init__(self):
        self.at, self.frames = {}, {}

    def __call__(self, t: int, x_t: torch.Tensor) -> None:
        if t in record_at:
            self.at[t] = x_t.clone()
        if t % 25 == 0 or t == T - 1:
            self.frames[t] = x_t.clone()


recorders = {"network": TrajectoryRecorder(), "exact": TrajectoryRecorder()}
toy_samples = {}
for name, denoiser in (("network", toy_model), ("exact", exact_model)):
    toy_samples[name] = generate(
        denoiser, scheduler, n_points, image_shape=(2,), sampler="ddpm", precision="float32", seed=14,
        batch_size=n_points, on_step=recorders[name],
    ).double()  # fmt: skip
print({name: tuple(samples.shape) for name, samples in toy_samples.items()})

# %% [markdown]
# The reverse process on the toy: the points entering the step at six timesteps, over the exact $q(x_t)$ each should
# follow, with the network (top) and the exact predictor (bottom); the right-most panel is the sample.

# %%
fig, axes = plt.subplots(2, len(record_at) + 1, figsize=(2.2 * (len(record_at) + 1), 4.8))
for row, name in enumerate(("network", "exact")):
    for column, t in enumerate(record_at):
        title = f"{name}: t = {t}" if column == 0 else f"t = {t}"
        draw_density(axes[row, column], mixture.noised(alpha_bars64[t]), recorders[name].at[t], title)
    draw_density(axes[row, -1], mixture, toy_samples[name], "sample")
fig.tight_layout()
save_figure(fig, "03_toy_reverse")
plt.show()

# %% [markdown]
# **Check — do the samples follow the data?** Two numbers per sampler, against fresh data points: the share of points
# each island gets (by the most probable component), and the average exact log-density $\mathbb E[\log q(x_0)]$ of the
# samples. The exact predictor must match the data up to Monte-Carlo error and the sampler's own small error (1000
# Gaussian reverse steps are not exactly the reverse process; section 5 looks at why they come close): it checks the
# sampler. The network must come close: it checks the training.

# %%
data_points = mixture.sample(n_points, torch.Generator().manual_seed(15))


def island_shares(points: torch.Tensor) -> torch.Tensor:
    return torch.bincount(mixture.responsibilities(points).argmax(1), minlength=6).double() / len(points)


data_log_q = mixture.log_prob(data_points)
print(f"{'':>8} island shares{'':>27} E log q(x_0)")
print(f"{'weights':>8} {[round(w, 3) for w in mixture.weights.tolist()]}")
print(f"{'data':>8} {[round(w, 3) for w in island_shares(data_points).tolist()]}  {data_log_q.mean():+.3f}")
for name, samples in toy_samples.items():
    log_q = mixture.log_prob(samples)
    print(f"{name:>8} {[round(w, 3) for w in island_shares(samples).tolist()]}  {log_q.mean():+.3f}")
share_tolerance = 4 * math.sqrt(0.25 * 0.75 / n_points)  # four standard errors of the largest share
log_q_se = math.sqrt(2 * data_log_q.var().item() / n_points)
exact_gap = (mixture.log_prob(toy_samples["exact"]).mean() - data_log_q.mean()).item()
network_gap = (mixture.log_prob(toy_samples["network"]).mean() - data_log_q.mean()).item()
print(
    f"E log q: exact predictor - data {exact_gap:+.3f}, network - data {network_gap:+.3f} (standard error {log_q_se:.3f})"
)
assert (island_shares(toy_samples["exact"]) - mixture.weights).abs().max() < share_tolerance
# four standard errors, or 0.15 nats: the 1000-step sampler's own bias (see below) is about a tenth of a nat
assert abs(exact_gap) < max(4 * log_q_se, 0.15)
assert (island_shares(toy_samples["network"]) - mixture.weights).abs().max() < 2 * share_tolerance
assert network_gap > -1.5  # the network's samples are a little more spread out than the data, not more

# %% [markdown]
# The exact predictor's samples have a *higher* average log-density than fresh data: in the full profile's run
# (4,000 points, the output above) by about a tenth of a nat, four standard errors. That is a result, not noise: the
# samples sit a little too close to the centres of the islands. The sampler's mean is exact (section 6 checks it to
# $10^{-15}$), so the shortfall is in its variance: every reverse step adds noise of variance $\tilde\beta_t$, while the true
# reverse step is a little wider (the last column of section 6's table), most of all at small $t$. The check allows
# 0.15 nats for it; the CI profile's 1,000 points are too few to see it.
#
# ### Try it: the reverse process, animated
#
# Press play (in JupyterLab) to watch the network's points find the six islands, every 25 steps from $t = 999$
# down. In a static page the player shows its first frame.

# %%
toy_frames = recorders["network"].frames
frame_ts = sorted(toy_frames, reverse=True)


def show_toy_frame(index: int = 0) -> None:
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    t = frame_ts[index]
    draw_density(ax, mixture.noised(alpha_bars64[t]), toy_frames[t], f"t = {t}")
    plt.show()


toy_play = widgets.Play(value=0, min=0, max=len(frame_ts) - 1, interval=150)
toy_slider = widgets.IntSlider(value=0, min=0, max=len(frame_ts) - 1, description="frame")
widgets.jslink((toy_play, "value"), (toy_slider, "value"))
display(
    widgets.HBox([toy_play, toy_slider]), widgets.interactive_output(show_toy_frame, {"index": toy_slider})
)
print(f"{len(frame_ts)} frames, t = {frame_ts[0]} ... {frame_ts[-1]}")
assert frame_ts[0] == T - 1 and frame_ts[-1] == 0

# %% [markdown]
# ### The bound on the toy, along training
#
# For the toy the exact negative log-likelihood of the data is known, so we can see how far below it the bound's
# $-L$ stays. Averaged over data, $\mathbb E[L] \ge \mathbb E[-\log p_\theta(x_0)] \ge \mathbb E[-\log q(x_0)]$: the second
# inequality because no model beats the data's own density on average (the difference is $\mathrm{KL}(q \,\|\, p_\theta)$).
# The gap $\mathbb E[L] - \mathbb E[-\log q(x_0)]$ therefore measures everything the model gets wrong, plus the bound's own
# slack. We evaluate it with every $t$ enumerated, on the same data points and noise for each snapshot of the
# weights, and for the exact predictor, which no network trained on $L_\text{simple}$ can beat.

# %%
bound_points = mixture.sample(PROFILE.theory_bound_points, torch.Generator().manual_seed(16))
nll = -mixture.log_prob(bound_points)


def toy_bound(denoiser: nn.Module) -> BoundEstimate:
    return variational_bound(
        denoiser, scheduler, bound_points, None, torch.Generator().manual_seed(17), "gaussian", 50_000
    )


snapshot_model = ToyDenoiser()
snapshot_model.eval()
bound_rows = {}
for step in snapshot_steps:
    snapshot_model.load_state_dict(snapshots[step])
    bound_rows[f"network after {step} steps"] = toy_bound(snapshot_model)
bound_rows["exact predictor"] = toy_bound(exact_model)
print(f"{len(bound_points)} data points; E[-log q(x_0)] = {nll.mean():.3f} nats")
print(f"{'':>28} {'E[L]':>7} {'gap':>14}  {'L_T':>6} {'sum L_t':>8} {'L_0':>7}")
gaps = {}
for name, estimate in bound_rows.items():
    gap = estimate.total - nll
    gaps[name] = (gap.mean().item(), gap.std().item() / math.sqrt(len(gap)))
    print(f"{name:>28} {estimate.mean():7.3f} {gaps[name][0]:7.3f} ± {gaps[name][1]:.3f}  "
          f"{estimate.prior.mean():6.3f} {estimate.steps.mean():8.3f} {estimate.decoder.mean():7.3f}")  # fmt: skip

# %%
first, last = (
    gaps[f"network after {snapshot_steps[0]} steps"],
    gaps[f"network after {snapshot_steps[-1]} steps"],
)
exact_gap = gaps["exact predictor"]
assert all(gap + 4 * se > 0 for gap, se in gaps.values())  # the bound lies above the exact -log q(x_0)
assert last[0] < first[0] / 3  # training tightens it
assert exact_gap[0] < last[0] + 4 * last[1]  # and the exact predictor gives the tightest bound
print(
    f"training tightened the gap from {first[0]:.2f} to {last[0]:.2f} nats; the exact predictor's is {exact_gap[0]:.2f}"
)

# %% [markdown]
# **Check — the split, a second way.** Everything above computed $L$ from its split into KL terms. The first form of
# section 3 needs no split: simulate forward paths $x_{1:T}$ from each data point and average
# $\log q(x_{1:T} \mid x_0) - \log p_\theta(x_{0:T})$, the forward chain's log-density minus the reverse chain's, step by
# step ($p(x_T) = \mathcal N(0, I)$, the Gaussian steps $\mathcal N(\mu_\theta(x_t, t), \tilde\beta_t I)$ and the decoder). Both
# are unbiased for $L$ of each point, so their difference must average to zero within its standard error; a wrong
# term in the split (a missing $t$, $\sigma_t^2 = \beta_t$ in one place) would show. Were the reverse chain exactly the
# forward one run backwards, every path would give the same number, $-\log q(x_0)$; the spread per path that the cell
# prints, about two nats even for the exact predictor, comes from the fixed variances of the reverse steps and the
# decoder, which are not the true ones (section 6 measures them).


# %%
@torch.no_grad()
def bound_along_paths(
    denoiser: nn.Module, x0: torch.Tensor, paths: int, generator: torch.Generator
) -> torch.Tensor:
    """log q(x_1:T | x_0) − log p_θ(x_0:T) along ``paths`` forward paths per point of ``x0`` (N, D): (N, paths)."""
    start = x0.double().repeat_interleave(paths, 0)
    log_ratio = torch.zeros(len(start), dtype=torch.float64)
    previous = start
    for t in range(T):  # the step from the code's x_{t-1} (x_0 when t = 0) to x_t, and the reverse step back
        x_t = q_step(
            scheduler, previous, t, torch.randn(start.shape, generator=generator, dtype=torch.float64)
        )
        log_ratio += normal_log_density(x_t, alphas64[t].sqrt() * previous, 1 - alphas64[t])
        output = denoiser(x_t.float(), torch.full((len(x_t),), t)).double()
        eps_hat = convert_prediction(output, x_t, alpha_bars64[t], prediction_of(denoiser), "eps")
        x0_hat = (x_t - (1 - alpha_bars64[t]).sqrt() * eps_hat) / alpha_bars64[t].sqrt()
        if t == 0:  # the decoder: the Gaussian density of the toy, mean x̂_0, width σ_1
            log_ratio -= gaussian_log_likelihood(start, x0_hat, decoder_std(scheduler)).sum(-1)
        else:
            model_mean = coef_x0[t] * x0_hat + coef_xt[t] * x_t
            log_ratio -= normal_log_density(previous, model_mean, posterior_variance[t])
        previous = x_t
    log_ratio -= normal_log_density(previous, torch.zeros_like(previous), 1.0)  # p(x_T)
    return log_ratio.reshape(len(x0), paths)


split_rows = {
    "network": snapshot_model,
    "exact predictor": exact_model,
}  # the network after its last snapshot
for name, denoiser in split_rows.items():
    along_paths = bound_along_paths(denoiser, bound_points, 4, torch.Generator().manual_seed(18))
    from_kl_terms = toy_bound(denoiser)
    difference = along_paths.mean(1) - from_kl_terms.total
    error = difference.std().item() / math.sqrt(len(difference))
    print(f"{name:>16}: along paths {along_paths.mean():.3f} (spread per path {along_paths.std():.2f}), "
          f"from the KL terms {from_kl_terms.mean():.3f}; difference {difference.mean():+.3f} ± {error:.3f}")  # fmt: skip
    assert abs(difference.mean().item()) < 4 * error

# %% [markdown]
# The untrained network's bound is about fourteen and a half nats above the truth (the first row); training on
# $L_\text{simple}$, which is not the bound,
# still tightens it, because both are minimised by the same $\hat\varepsilon$. Even the exact predictor leaves a gap:
# the reverse steps of the bound have the fixed variance $\tilde\beta_t$, while the true reverse step (section 6) is a
# little wider, and the decoder's $\sigma_1$ is fixed too. A learned variance {cite:p}`nichol2021improved` closes part of it.
#
# ## 5. $\varepsilon$ is a scaled score
#
# What is the best possible noise prediction, and what does it say about the data? Differentiate
# $q(x_t) = \int q(x_t \mid x_0)\, q(x_0)\, dx_0$ under the integral: since
# $\nabla_{x_t} \log q(x_t \mid x_0) = -(x_t - \sqrt{\bar\alpha_t}\,x_0)/(1-\bar\alpha_t) = -\varepsilon/\sqrt{1-\bar\alpha_t}$,
#
# $$ \nabla \log q(x_t) = \frac{\int \nabla q(x_t \mid x_0)\, q(x_0)\, dx_0}{q(x_t)}
#    = \mathbb E\!\left[\nabla_{x_t} \log q(x_t \mid x_0) \,\middle|\, x_t\right]
#    = -\frac{\mathbb E[\varepsilon \mid x_t]}{\sqrt{1-\bar\alpha_t}} . $$
#
# A network trained with a squared error learns a conditional mean, here $\mathbb E[\varepsilon \mid x_t]$. So the ideal
# noise predictor is a scaled score, $\varepsilon^*(x_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla \log q(x_t)$, and a trained one
# gives a score estimate $-\hat\varepsilon/\sqrt{1-\bar\alpha_t}$: training on $L_\text{simple}$ is denoising score matching
# {cite:p}`vincent2011connection,song2019ncsn`. Substituting $\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}$
# gives **Tweedie's formula** {cite:p}`efron2011tweedie` for the best estimate of the clean point:
#
# $$ \mathbb E[x_0 \mid x_t] = \frac{x_t + (1-\bar\alpha_t)\,\nabla \log q(x_t)}{\sqrt{\bar\alpha_t}} . $$
#
# Nothing here makes the noise the best *target*. A network that predicts $x_0$, or $v$, learns
# $\mathbb E[x_0 \mid x_t]$ or $\mathbb E[v \mid x_t]$, and each of the three converts exactly into the others
# ([chapter 02](02_forward_process.py)'s `convert_prediction`): they share the optimum. They differ in how an
# unweighted squared error spreads the network's effort over $t$: an error $\delta$ in $\hat\varepsilon$ is an error
# $\delta/\sqrt{\mathrm{SNR}_t}$ in $\hat x_0$, so $L_\text{simple}$ in $\varepsilon$ weighs $x_0$'s error by $\mathrm{SNR}_t$. That
# {cite:t}`ho2020ddpm` predicted $\varepsilon$ is an empirical choice: it gave them better samples than predicting the
# posterior mean. [Chapter 11](11_putting_together.py) trains with $v$ and min-SNR weights, which set that balance
# directly.
#
# **Check — Tweedie, exactly.** For the mixture, $\mathbb E[x_0 \mid x_t]$ can be computed without any score: given the
# component $k$, $(x_0, x_t)$ is jointly Gaussian, so $\mathbb E[x_0 \mid x_t, k] = m_k + \sqrt{\bar\alpha_t}\,C_k
# \big(\bar\alpha_t C_k + (1-\bar\alpha_t) I\big)^{-1}(x_t - \sqrt{\bar\alpha_t}\,m_k)$, and averaging with the
# responsibilities $P(k \mid x_t)$ gives $\mathbb E[x_0 \mid x_t]$. Tweedie's formula with the exact score must agree.


# %%
def conditional_mean_x0(mixture: GaussianMixture, alpha_bar: float, x_t: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] for x_0 from ``mixture``, by Gaussian conditioning within each component (no score involved)."""
    noised = mixture.noised(alpha_bar)
    gains = math.sqrt(alpha_bar) * mixture.covariances @ torch.linalg.inv(noised.covariances)  # (K, D, D)
    offsets = x_t[:, None, :] - noised.means  # (N, K, D)
    per_component = mixture.means + torch.einsum("kde,nke->nkd", gains, offsets)
    return (noised.responsibilities(x_t)[:, :, None] * per_component).sum(1)


worst_tweedie = 0.0
for t in (0, 10, 100, 500, 999):
    alpha_bar = alpha_bars64[t].item()
    x_t = mixture.noised(alpha_bar).sample(1000, torch.Generator().manual_seed(18))
    tweedie = (x_t + (1 - alpha_bar) * mixture.noised(alpha_bar).score(x_t)) / math.sqrt(alpha_bar)
    direct = conditional_mean_x0(mixture, alpha_bar, x_t)
    worst_tweedie = max(worst_tweedie, (tweedie - direct).abs().max().item())
print(f"max |Tweedie - direct E[x_0 | x_t]| over t = 0, 10, 100, 500, 999: {worst_tweedie:.1e}")
assert worst_tweedie < 1e-9

# %% [markdown]
# **The network's score against the exact one.** At each noise level, the relative error
# $\mathbb E\lVert \hat s - s \rVert^2 / \mathbb E\lVert s \rVert^2$ of the network's score $\hat s = -\hat\varepsilon/\sqrt{1-\bar\alpha_t}$,
# with $x_t$ drawn from the exact $q(x_t)$. The same number is the error of $\hat\varepsilon$ relative to $\varepsilon^*$.

# %%
score_rows = []
for t in (0, 10, 50, 100, 200, 400, 700, 999):
    alpha_bar = alpha_bars64[t].item()
    x_t = mixture.noised(alpha_bar).sample(n_points, torch.Generator().manual_seed(19))
    with torch.no_grad():
        network_score = -toy_model(x_t.float(), torch.full((len(x_t),), t)).double() / math.sqrt(
            1 - alpha_bar
        )
    exact_score = mixture.noised(alpha_bar).score(x_t)
    relative = (((network_score - exact_score) ** 2).sum(1).mean() / (exact_score**2).sum(1).mean()).item()
    score_rows.append((t, exact_score.norm(dim=1).mean().item(), relative))
    print(
        f"t = {t:3d}: mean |score| {score_rows[-1][1]:7.2f}; relative squared error of the network's score {relative:.4f}"
    )
assert all(relative < 0.2 for t, _, relative in score_rows if t >= 50)
assert max(score_rows, key=lambda row: row[2])[0] <= 10  # the largest error sits at the smallest t

# %% [markdown]
# Both vector fields, at three noise levels, on a grid (arrows scaled per panel). Where the data are dense the
# two agree; they differ most at small $t$, close to the sharp edges of the islands, where the score is large and
# $L_\text{simple}$ gives the error little weight.

# %%
field_axis = torch.linspace(-1.4, 1.4, 15, dtype=torch.float64)
field_x, field_y = torch.meshgrid(field_axis, field_axis, indexing="xy")
field_points = torch.stack([field_x.flatten(), field_y.flatten()], dim=1)
field_ts = [20, 150, 500]
fig, axes = plt.subplots(2, len(field_ts), figsize=(3.2 * len(field_ts), 6.4))
field_errors = []
for column, t in enumerate(field_ts):
    alpha_bar = alpha_bars64[t].item()
    exact_field = mixture.noised(alpha_bar).score(field_points)
    with torch.no_grad():
        network_field = -toy_model(field_points.float(), torch.full((len(field_points),), t)).double()
    network_field = network_field / math.sqrt(1 - alpha_bar)
    weight = mixture.noised(alpha_bar).log_prob(field_points).exp()  # errors count where the data are
    field_errors.append(
        (
            (weight * ((network_field - exact_field) ** 2).sum(1)).sum()
            / (weight * (exact_field**2).sum(1)).sum()
        ).item()
    )
    for row, (name, vectors) in enumerate(
        (("exact score", exact_field), ("network: -eps/sqrt(1-abar)", network_field))
    ):
        ax = axes[row, column]
        density = mixture.noised(alpha_bar).log_prob(grid_points).reshape(grid_x.shape).clamp(min=-8)
        ax.contour(grid_x, grid_y, density, levels=8, linewidths=0.5, cmap="viridis")
        arrows = (vectors / vectors.norm(dim=1).max()).T.reshape(2, *field_x.shape)
        ax.quiver(field_x, field_y, arrows[0], arrows[1], scale=12, width=0.004)
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}, t = {t}", fontsize=8)
fig.tight_layout()
save_figure(fig, "03_score_fields")
plt.show()

# %%
print(
    "density-weighted relative squared error on the grid:",
    dict(zip(field_ts, [round(e, 4) for e in field_errors], strict=True)),
)
assert all(error < 0.25 for error in field_errors)

# %% [markdown]
# ### Langevin dynamics: sampling with a score alone
#
# A score is enough to sample. **Langevin dynamics** moves a point uphill on $\log q$ and adds noise,
#
# $$ x \leftarrow x + \frac{\delta}{2}\,\nabla \log q(x) + \sqrt{\delta}\,z, \qquad z \sim \mathcal N(0, I) , $$
#
# and for a small step $\delta$ and many steps its points are distributed as $q$, whatever they started from. In
# practice "many" can be very many: a point has to cross the empty space between the islands, which the small steps
# a sharp density needs make rare. **Annealed Langevin dynamics** {cite:p}`song2019ncsn` runs it on a sequence of
# noised densities $q(x_t)$ from $t = T-1$ down, where the islands are first merged and then slowly separate, with a
# step size proportional to each level's noise variance, and ends with a few plain steps on $q$ itself. Both below
# use the *exact* score, no network: they check the claim that the score alone determines the samples.


# %%
def langevin(
    score, x: torch.Tensor, step_size: float, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """``steps`` Langevin updates x ← x + (δ/2) score(x) + √δ z of the points ``x`` (N, D)."""
    for _ in range(steps):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x + 0.5 * step_size * score(x) + math.sqrt(step_size) * z
    return x


langevin_points = 4000  # in every profile: the check compares shares of a few percent
generator = torch.Generator().manual_seed(20)
start_points = torch.randn((langevin_points, 2), generator=generator, dtype=torch.float64)
plain = langevin(mixture.score, start_points, 2e-4, 1000, generator)
annealed = start_points
for t in torch.linspace(T - 1, 0, 50).round().long().tolist():
    level = mixture.noised(alpha_bars64[t])
    annealed = langevin(level.score, annealed, 2e-4 + 0.2 * (1 - alpha_bars64[t].item()), 20, generator)
annealed = langevin(mixture.score, annealed, 2e-4, 200, generator)  # settle into the sharp data density
for name, points in (("plain Langevin", plain), ("annealed Langevin", annealed)):
    shares = island_shares(points)
    print(
        f"{name:>18}: island shares {[round(w, 3) for w in shares.tolist()]}, E log q {mixture.log_prob(points).mean():+.3f}"
    )
print(f"{'data':>18}: island shares {[round(w, 3) for w in island_shares(data_points).tolist()]}, "
      f"E log q {data_log_q.mean():+.3f}")  # fmt: skip
langevin_tolerance = 4 * math.sqrt(0.25 * 0.75 / langevin_points)  # four standard errors of the largest share
plain_error = (island_shares(plain) - mixture.weights).abs().max().item()
annealed_error = (island_shares(annealed) - mixture.weights).abs().max().item()
print(
    f"largest share error: plain {plain_error:.3f}, annealed {annealed_error:.3f} (four standard errors: {langevin_tolerance:.3f})"
)
assert annealed_error < langevin_tolerance
assert plain_error > langevin_tolerance  # stuck near where it started
assert abs(mixture.log_prob(annealed).mean() - data_log_q.mean()) < 0.25

# %% [markdown]
# Plain Langevin gives each island roughly the share of starting points that fell near it, not its weight; annealing
# fixes the shares. DDPM's sampler is a close relative: each reverse step moves $x_t$ along the (estimated) score of
# the current noise level and adds fresh noise, while the level decreases.
#
# **Check — the update, exactly.** For a Gaussian target $\mathcal N(0, c)$ in one dimension the score is $-x/c$, the
# update is linear, $x \mapsto (1 - \frac{\delta}{2c})\,x + \sqrt\delta\,z$, and the mean and variance of a cloud of
# points follow $m \leftarrow (1 - \frac{\delta}{2c})\,m$ and $v \leftarrow (1 - \frac{\delta}{2c})^2\,v + \delta$, step by step. `langevin`
# must move a cloud accordingly. (Where $v$ settles, and why it is not $c$, is exercise 3.3.)

# %%
c, delta, steps = 0.1, 0.05, 60
cloud = langevin(
    lambda x: -x / c,
    torch.ones((20_000, 1), dtype=torch.float64),
    delta,
    steps,
    torch.Generator().manual_seed(31),
)
m, v = 1.0, 0.0  # every point starts at 1
for _ in range(steps):
    m, v = (1 - delta / (2 * c)) * m, (1 - delta / (2 * c)) ** 2 * v + delta
print(
    f"after {steps} steps: mean {cloud.mean():.4f} (recursion {m:.4f}), variance {cloud.var():.4f} (recursion {v:.4f})"
)
assert abs(cloud.mean().item() - m) < 4 * math.sqrt(v / len(cloud))
assert abs(cloud.var().item() / v - 1) < 4 * math.sqrt(2 / len(cloud))

# %% [markdown]
# ### The probability-flow ODE: the deterministic twin
#
# Let the steps become infinitely many: with $\beta(s)$ the noise rate at continuous time $s$, the forward process is the
# stochastic differential equation $dx = -\frac12\beta(s)\,x\,ds + \sqrt{\beta(s)}\,dW$, and DDPM's reverse process is its
# time reversal. {cite:t}`song2021sde` showed that the **ordinary** differential equation
#
# $$ \frac{dx}{ds} = -\frac12\,\beta(s)\,\big[x + \nabla \log q_s(x)\big] $$
#
# moves a cloud of points through the very same marginals $q(x_s)$, with no noise at all: each starting point
# $x_T$ maps to one sample, along a smooth path. [Chapter 08](08_fast_sampling.py)'s DDIM ($\eta = 0$) and DPM-Solver++ are solvers for this
# ODE with the score $-\hat\varepsilon/\sqrt{1-\bar\alpha_t}$; here we run them with the exact predictor. The same starting
# points, through the ancestral sampler (two different seeds for its noise) and through DDIM:

# %%
x_T = torch.randn((n_points, 2), generator=torch.Generator().manual_seed(21))
paths = {"ancestral, seed 1": [], "ancestral, seed 2": [], "ODE (DDIM, 50 steps)": []}
finals = {}
for name in paths:
    record = paths[name]
    hook = lambda t, x, record=record: record.append((t, x[:6].clone()))  # noqa: E731
    if name.startswith("ancestral"):
        generator = torch.Generator().manual_seed(int(name[-1]))
        finals[name] = sample_loop(exact_model, scheduler, x_T, clip=False, generator=generator, on_step=hook)
    else:
        finals[name] = ddim_sample(
            exact_model, scheduler, x_T, timesteps_for(T, 50), eta=0.0,
            generator=torch.Generator().manual_seed(22), on_step=hook,
        )  # fmt: skip
ode_again = ddim_sample(
    exact_model, scheduler, x_T, timesteps_for(T, 50), eta=0.0, generator=torch.Generator().manual_seed(23)
)

fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
for ax, (name, record) in zip(axes, paths.items(), strict=True):
    draw_density(ax, mixture, torch.empty(0, 2), name)
    trajectory = torch.stack([x for _, x in record] + [finals[name][:6]])  # (steps + 1, 6, 2)
    for point in range(6):
        ax.plot(trajectory[:, point, 0], trajectory[:, point, 1], lw=0.7)
    ax.scatter(x_T[:6, 0], x_T[:6, 1], s=12, color="black", marker="x")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-2.5, 2.5)
fig.tight_layout()
save_figure(fig, "03_ode_vs_sde")
plt.show()

# %%
ode = finals["ODE (DDIM, 50 steps)"].double()
ancestral_difference = (finals["ancestral, seed 1"] - finals["ancestral, seed 2"]).norm(dim=1).mean().item()
print(f"same x_T: mean distance between the two ancestral samples {ancestral_difference:.3f}; "
      f"between two ODE runs {(ode_again.double() - ode).abs().max().item():.1e}")  # fmt: skip
print(f"ODE samples: island shares {[round(w, 3) for w in island_shares(ode).tolist()]}, E log q {mixture.log_prob(ode).mean():+.3f} "
      f"(data {data_log_q.mean():+.3f})")  # fmt: skip
assert ancestral_difference > 0.1 and torch.equal(ode_again.double(), ode)  # the ODE is deterministic
assert (island_shares(ode) - mixture.weights).abs().max() < share_tolerance

# %% [markdown]
# The shares are right, but $\mathbb E \log q$ of the ODE's samples is *higher* than the data's: they sit a little too
# close to the centres of the islands. That is the solver's error, not the ODE's: 50 steps are coarse where the islands
# are sharp, near $t = 0$. With more steps the gap closes:

# %%
ode_gaps = {}
for steps in (50, 200, 1000):
    points = ddim_sample(
        exact_model, scheduler, x_T, timesteps_for(T, steps), eta=0.0,
        generator=torch.Generator().manual_seed(22),
    )  # fmt: skip
    ode_gaps[steps] = (mixture.log_prob(points.double()).mean() - data_log_q.mean()).item()
    print(f"DDIM, {steps:4d} steps: E log q(samples) - E log q(data) = {ode_gaps[steps]:+.3f}")
assert ode_gaps[50] > ode_gaps[200] > ode_gaps[1000]  # the discretisation error shrinks with the step
assert abs(ode_gaps[1000]) < 0.25

# %% [markdown]
# The ancestral paths are jagged and end in different places for different noise; the ODE's paths are smooth, and a
# starting point has exactly one sample. Both clouds follow the data, the ODE's more closely the finer its steps. Because
# the ODE map is deterministic and invertible, it also turns $x_0$ back into its $x_T$ (DDIM inversion) and gives exact
# likelihoods {cite:p}`song2021sde`;
# [chapter 08](08_fast_sampling.py) uses it for speed: a smooth path can be followed with large steps.
#
# ## 6. Why a Gaussian reverse step is enough
#
# The model assumes every reverse step $p_\theta(x_{t-1} \mid x_t)$ is Gaussian, but the true reverse step
# $q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\, q(x_{t-1})$ is, for the toy, a mixture. Why does that work?
# The first factor, as a function of $x_{t-1}$, is the Gaussian $\mathcal N(x_t/\sqrt{\alpha_t},\ (\beta_t/\alpha_t) I)$: its width
# $\sqrt{\beta_t/\alpha_t}$ grows along the linear schedule up to $\sqrt{0.02/0.98} \approx 0.14$. Across so narrow a region
# $\log q(x_{t-1})$ is nearly linear, $\log q(x_{t-1}) \approx \text{const} + g \cdot x_{t-1}$ with $g$ its gradient near
# $x_t/\sqrt{\alpha_t}$, provided its curvature times the squared width is small,
# $(\beta_t/\alpha_t)\,\lVert\nabla^2 \log q\rVert \ll 1$. A Gaussian times the exponential of a linear function is again a
# Gaussian: completing the square, the mean moves by the variance times the gradient, to
# $x_t/\sqrt{\alpha_t} + (\beta_t/\alpha_t)\,g$. Since $q(x_t)$ is $q(x_{t-1})$ scaled by $\sqrt{\alpha_t}$ and widened a
# little, $g \approx \sqrt{\alpha_t}\,\nabla\log q(x_t)$, and
#
# $$ \mathbb E[x_{t-1} \mid x_t] \approx \frac{x_t + \beta_t\,\nabla\log q(x_t)}{\sqrt{\alpha_t}}
#    = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\varepsilon^*(x_t, t)\right) , $$
#
# with variance about $\beta_t$: DDPM's Algorithm 2 (section 3), with the ideal $\varepsilon^*$ of section 5 in place of
# the network's. It is the Langevin step of section 5 in another guise: a move along the score plus fresh noise. The
# error comes from the curvature of $\log q$ across the width, and shrinks with $\beta_t$ {cite:p}`sohl2015deep`. With
# large steps, such as 10 steps of 100 instead of 1000 of 1, the width is several times larger and the approximation
# fails where $q(x_{t-1})$ is not itself Gaussian.
#
# For the toy the scale can be printed: the largest curvature of one island's noised log-density is the reciprocal of
# its smallest variance, $1/(\bar\alpha_{t-1} c_\text{min} + 1 - \bar\alpha_{t-1})$, with $c_\text{min}$ the smallest
# eigenvalue of the islands' covariances. The condition is sufficient, not necessary: at large $t$ the noised islands
# merge into one nearly Gaussian density, whose curvature is the same everywhere, and then even a wide step stays
# Gaussian.


# %%
c_min = torch.linalg.eigvalsh(mixture.covariances).min().item()
print(f"smallest island variance c_min = {c_min:.4f}")
print(f"{'t':>4} {'jump':>5} {'width':>7} {'width^2 x curvature':>20}")
linearisation = {}
for t in (1, 10, 30, 99, 199, 299, 499, 999):
    for jump in (1, 100) if t >= 99 else (1,):
        alpha_bar_s = 1.0 if t - jump < 0 else alpha_bars64[t - jump].item()
        step_beta = 1 - alpha_bars64[t].item() / alpha_bar_s  # the jump's β: x_t = √(1 − β) x_s + √β noise
        width_squared = step_beta / (1 - step_beta)
        linearisation[t, jump] = width_squared / (alpha_bar_s * c_min + 1 - alpha_bar_s)
        print(f"{t:4d} {jump:5d} {math.sqrt(width_squared):7.4f} {linearisation[t, jump]:20.3g}")
assert max(value for (t, jump), value in linearisation.items() if jump == 1) < 0.1

# %% [markdown]
# For the toy we can compute the true reverse step exactly: each island gives one Gaussian (the product of two
# Gaussians in $x_{t-1}$), weighted by how likely the island makes $x_t$. We compare it with the Gaussian with the
# same mean and covariance, the best any Gaussian step could do, by their KL divergence, computed on a fine grid,
# for jumps from $t$ to $t - 1$ (1000 steps) and to $t - 100$ (10 steps; $t - 100 = -1$ is the clean data).


# %%
def exact_reverse_step(mixture: GaussianMixture, t: int, s: int, x_t: torch.Tensor) -> GaussianMixture:
    """q(x_s | x_t) for one point x_t (D,), s < t: a mixture with one Gaussian per component of the data."""
    alpha_bar_s = 1.0 if s < 0 else alpha_bars64[s].item()
    ratio = alpha_bars64[t].item() / alpha_bar_s  # x_t = √ratio · x_s + √(1 − ratio) · noise
    prior = mixture.noised(alpha_bar_s)  # q(x_s), component by component
    prior_precisions = torch.linalg.inv(prior.covariances)
    precisions = prior_precisions + ratio / (1 - ratio) * torch.eye(mixture.dim, dtype=torch.float64)
    covariances = torch.linalg.inv(precisions)
    information = (
        prior_precisions @ prior.means[:, :, None] + math.sqrt(ratio) / (1 - ratio) * x_t[None, :, None]
    )
    means = (covariances @ information)[:, :, 0]
    weights = mixture.noised(alpha_bars64[t]).responsibilities(x_t[None])[0]  # P(k | x_t)
    return GaussianMixture(weights, means, 0.5 * (covariances + covariances.transpose(1, 2)))


def kl_to_moment_matched_gaussian(density: GaussianMixture, grid_size: int = 201) -> float:
    """KL(density ‖ the Gaussian with its mean and covariance), by the midpoint rule on a grid of ±8 std."""
    mean, covariance = density.mean(), density.covariance()
    half_widths = 8 * covariance.diagonal().sqrt()
    axes = [
        torch.linspace(mean[i] - half_widths[i], mean[i] + half_widths[i], grid_size, dtype=torch.float64)
        for i in range(2)
    ]
    cell = (axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0])
    points = torch.stack([a.flatten() for a in torch.meshgrid(*axes, indexing="ij")], dim=1)
    log_p = density.log_prob(points)
    log_gaussian = torch.distributions.MultivariateNormal(mean, covariance).log_prob(points)
    return (cell * (log_p.exp() * (log_p - log_gaussian)).sum()).item()


# %% [markdown]
# **Check — the exact reverse mean is the sampler's mean with the exact predictor.** Since $\tilde\mu_t(x_t, x_0)$ is
# linear in $x_0$, $\mathbb E[x_{t-1} \mid x_t] = \tilde\mu_t(x_t, \mathbb E[x_0 \mid x_t])$: the posterior step of [chapter 06](06_sampling.py)
# with $\hat x_0$ from $\varepsilon^*$ has exactly the right mean, for any jump. Its variance is the only approximation:
# the true covariance is $\tilde\beta I$ plus the coefficient of $x_0$, squared, times $\mathrm{Cov}(x_0 \mid x_t)$.


# %%
def sampler_step_mean(t: int, s: int, x0_hat: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """The mean of chapter 06's `posterior_step` from t to s: its output minus the noise it added (same seed)."""
    alpha_bar_s = 1.0 if s < 0 else alpha_bars64[s].item()
    beta = 1 - alpha_bars64[t].item() / alpha_bar_s
    noise_std = math.sqrt((1 - alpha_bar_s) / (1 - alpha_bars64[t].item()) * beta)
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(0), dtype=x_t.dtype)
    return posterior_step(scheduler, t, s, x0_hat, x_t, torch.Generator().manual_seed(0)) - noise_std * z


generator = torch.Generator().manual_seed(24)
reverse_rows = []
for t in (1, 10, 30, 99, 199, 299, 499, 999):
    points = mixture.noised(alpha_bars64[t]).sample(10, generator)
    for jump in (1, 100) if t >= 99 else (1,):
        kls, mean_errors, excess = [], [], []
        for x_t in points:
            exact_step = exact_reverse_step(mixture, t, t - jump, x_t)
            kls.append(kl_to_moment_matched_gaussian(exact_step))
            x0_hat = conditional_mean_x0(mixture, alpha_bars64[t].item(), x_t[None])
            sampler_mean = sampler_step_mean(t, t - jump, x0_hat, x_t[None])[0]
            mean_errors.append((sampler_mean - exact_step.mean()).abs().max().item())
            alpha_bar_s = 1.0 if t - jump < 0 else alpha_bars64[t - jump].item()
            step_variance = (
                (1 - alpha_bar_s) / (1 - alpha_bars64[t].item()) * (1 - alpha_bars64[t].item() / alpha_bar_s)
            )
            true_variance = exact_step.covariance().trace().item() / 2  # per coordinate
            excess.append(true_variance / step_variance - 1 if step_variance > 0 else math.inf)
        reverse_rows.append((t, jump, sum(kls) / len(kls), max(mean_errors), sum(excess) / len(excess)))
print(
    f"{'t':>4} {'jump':>5} {'KL(true step || best Gaussian)':>32} {'max |mean error|':>17} {'true variance / beta~ - 1':>26}"
)
for t, jump, kl, mean_error, excess in reverse_rows:
    print(f"{t:4d} {jump:5d} {kl:32.2e} {mean_error:17.1e} {excess:26.3g}")
assert max(row[3] for row in reverse_rows) < 1e-9  # the sampler's mean is the exact reverse mean

# %%
small_steps = {t: kl for t, jump, kl, *_ in reverse_rows if jump == 1}
large_steps = {t: kl for t, jump, kl, *_ in reverse_rows if jump == 100}
print("KL of the best Gaussian step, 1000 steps:", {t: f"{kl:.1e}" for t, kl in small_steps.items()})
print("KL of the best Gaussian step,   10 steps:", {t: f"{kl:.1e}" for t, kl in large_steps.items()})
assert (
    max(small_steps.values()) < 1e-4
)  # with 1000 steps every reverse step is Gaussian to 1e-4 nats, t = 1 included
assert large_steps[99] > 0.1  # with 10 steps the last one is far from Gaussian
assert all(large_steps[t] > 1000 * small_steps[t] for t in large_steps if large_steps[t] > 1e-12)

# %% [markdown]
# The contours of the true reverse step for one $x_t$ (colour) and of its best Gaussian (grey ellipses at 1, 2 and 3
# standard deviations), for the last step of each chain ($t = 99$):

# %%
x_t = torch.tensor([0.35, 0.15], dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
for ax, jump in zip(axes, (1, 100), strict=True):
    density = exact_reverse_step(mixture, 99, 99 - jump, x_t)
    mean, covariance = density.mean(), density.covariance()
    half = 4 * covariance.diagonal().sqrt().max().item()
    axis = torch.linspace(-half, half, 161, dtype=torch.float64)
    local_x, local_y = torch.meshgrid(mean[0] + axis, mean[1] + axis, indexing="xy")
    local = torch.stack([local_x.flatten(), local_y.flatten()], dim=1)
    ax.contourf(
        local_x, local_y, density.log_prob(local).exp().reshape(local_x.shape), levels=12, cmap="viridis"
    )
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    angle = torch.linspace(0, 2 * math.pi, 100, dtype=torch.float64)
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    for radius in (1, 2, 3):
        ellipse = mean + radius * (circle * eigenvalues.sqrt()) @ eigenvectors.T
        ax.plot(ellipse[:, 0], ellipse[:, 1], color="lightgrey", lw=0.8)
    ax.set_aspect("equal")
    ax.set_title(
        f"q(x_(t-{jump}) | x_t), t = 99: KL to the Gaussian {kl_to_moment_matched_gaussian(density):.1e}",
        fontsize=8,
    )
fig.tight_layout()
save_figure(fig, "03_reverse_step")
plt.show()
print(
    f"islands that could have produced x_t: {(exact_reverse_step(mixture, 99, -1, x_t).weights > 0.01).sum().item()}"
)
assert (
    exact_reverse_step(mixture, 99, -1, x_t).weights > 0.01
).sum() >= 2  # a multimodal last step for 10 steps

# %% [markdown]
# With 1000 steps each true reverse step, down to $t = 1$, is Gaussian to within $10^{-4}$ nats, and to far less away from
# the data end. With 10 steps, the table says where a short chain pays: not at large $t$, where the noised islands have
# merged and even a jump of 100 is Gaussian to about $10^{-6}$ nats from $t = 499$ on, but in the last jumps (already
# $10^{-3}$ at $t = 299$, $5 \cdot 10^{-2}$ at $t = 199$), and above all the one to
# the data, which has to choose between islands, as no Gaussian can. That is why DDPM takes many small steps, and what
# [chapter 08](08_fast_sampling.py) measures when it runs DDPM's step on a respaced chain of 20 steps and compares it
# with the deterministic samplers that follow the ODE of section 5.
#
# ## 7. The bound for MNIST, in bits per dimension
#
# The same estimator, for the shipped unconditional model `ddpm_mnist` on held-out digits, with the discretised
# decoder. A bound in nats per image becomes **bits per dimension** by dividing by $784 \ln 2$: the number of bits
# per pixel a code built from the model would need (at most; a uniform guess over 256 levels needs 8). The cell
# computes a small version live: a few digits and a few draws of $t$ each, so its Monte-Carlo standard error is
# large. The full measurement is a command (it is `ddpm_lib.theory.variational_bound` on every held-out digit):
#
# ```bash
# python -m ddpm_lib bound --weights ddpm_mnist --n 500 --t-samples 200 --seed 0
# ```
#
# which printed, for the weights `ddpm_mnist` the package ships (36,000 steps, predicting $v$: the bound converts
# its output to $\hat\varepsilon$ with [chapter 02](02_forward_process.py)'s `convert_prediction`), **2.121 ± 0.030 bits per dimension**
# (all 500 held-out digits, 200 draws of $t$ per digit; Monte-Carlo standard error; about eight minutes on two CPU
# cores). Of that, the decoder term $L_0$ is 1.084 bits/dim and the sum of the $L_{t-1}$ 1.037; $L_T$ is 0.000
# to the printed precision.

# %%
model, mnist_scheduler, provenance = load_pretrained("ddpm_mnist")
model.requires_grad_(False)
n_digits, t_samples = PROFILE.theory_mnist_digits, PROFILE.theory_mnist_t_samples
chosen = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:n_digits]
live = variational_bound(model, mnist_scheduler, digits[chosen], t_samples, torch.Generator().manual_seed(0))
to_bits = 1 / (784 * math.log(2))
print(f"shipped denoiser: {provenance['summary']}")
print(f"{n_digits} held-out digits, {t_samples} t-samples each: "
      f"{live.bits_per_dim():.2f} ± {live.bits_per_dim_standard_error():.2f} bits/dim")  # fmt: skip
print(
    f"  L_T {live.prior.mean() * to_bits:.5f}, sum of L_t {live.steps.mean() * to_bits:.2f}, L_0 {live.decoder.mean() * to_bits:.2f} bits/dim"
)
assert 0 < live.bits_per_dim() < 8  # better than a uniform guess over 256 levels
assert live.prior.max() < 0.05

# %% [markdown]
# **The decoder's floor.** $L_0$ has a part no network can remove: even with the perfect mean $\hat x_0 = x_0$, the
# decoder spreads its probability over a Gaussian of width $\sigma_1$, which is not much wider than half a bin
# ($1/255$), so a pixel's own bin gets only part of it. An interior level keeps the mass of $[-1/255, 1/255]$ around the
# mean; the two end levels, whose bins are open, keep that of a half-line. The cell computes both costs from the
# error function, the share of held-out pixels at an end level, and the floor they make, and checks the floor against
# `discretized_gaussian_log_likelihood` with mean $x_0$ and against `BoundEstimate`'s conversion to bits.

# %%
sigma_1 = decoder_std(mnist_scheduler)
z = (1 / 255) / (sigma_1 * math.sqrt(2))
interior_cost = -math.log(math.erf(z))  # −log P(|noise| < half a bin)
end_cost = -math.log(0.5 * (1 + math.erf(z)))  # −log P(noise < half a bin): the open bin at either end
at_ends = ((digits == -1) | (digits == 1)).double().mean().item()
floor_from_erf = at_ends * end_cost + (1 - at_ends) * interior_cost  # nats per pixel
floor = -discretized_gaussian_log_likelihood(digits, digits, sigma_1).flatten(1).sum(1)  # nats per digit
zeros = torch.zeros_like(floor)
floor_bits = BoundEstimate(floor, zeros, zeros, floor, None, 784).bits_per_dim()
print(f"sigma_1 = {sigma_1:.5f}: a perfect mean costs {interior_cost:.3f} nats at an interior level, "
      f"{end_cost:.3f} at an end level")  # fmt: skip
print(f"{at_ends:.1%} of the held-out pixels sit at an end level: the floor is {floor.mean() / 784:.3f} nats "
      f"= {floor_bits:.3f} bits per dimension")  # fmt: skip
print(f"L_0 of the shipped model: {live.decoder.mean() * to_bits:.2f} bits/dim here; 1.084 in the full measurement "
      f"(the command above), of which the floor is {floor_bits / 1.084:.0%}")  # fmt: skip
assert abs(floor.mean().item() / 784 - floor_from_erf) < 1e-9
assert abs(floor_bits - floor_from_erf / math.log(2)) < 1e-9  # bits per dimension: nats / ln 2
assert live.decoder.mean() * to_bits > floor_bits

# %% [markdown]
# Where do the bits go? The terms $L_t$ of one digit along $t$ (one noise draw each, on a log-spaced set of $t$):

# %%
digit = digits[chosen[:1]]
term_ts = torch.unique(torch.logspace(0, math.log10(T - 1), PROFILE.theory_term_timesteps).round().long())
terms = bound_terms(
    model, mnist_scheduler, digit.expand(len(term_ts), -1, -1, -1), term_ts,
    torch.randn((len(term_ts), 1, 28, 28), generator=torch.Generator().manual_seed(25)),
)  # fmt: skip
decoder_term = bound_terms(
    model,
    mnist_scheduler,
    digit,
    torch.zeros(1, dtype=torch.long),
    torch.randn(digit.shape, generator=torch.Generator().manual_seed(26)),
)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.loglog(term_ts, terms, "o-", ms=3, label=r"$L_t$ (KL of the step from $t$)")
ax.axhline(decoder_term.item(), color="grey", ls="--", label=r"$L_0$ (decoder)")
ax.set_xlabel("t")
ax.set_ylabel("nats")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "03_mnist_bound_terms")
plt.show()
print(
    f"L_0 = {decoder_term.item():.1f} nats; L_t at t = {term_ts[0].item()}: {terms[0]:.1f}, at t = {term_ts[-1].item()}: {terms[-1]:.4f}"
)
assert terms[0] > 10 * terms[-1]  # the small-t terms dominate

# %% [markdown]
# Two terms dominate: the decoder $L_0$ and the KL terms at the smallest $t$. Of $L_0$, the floor set by the fixed width
# $\sigma_1$ is the larger part (the cell before the plot prints it); the rest is the network's error in $\hat x_0$ at
# $t = 0$. That error, and the KL terms at the smallest $t$, are where min-SNR weighting gave the network's errors
# almost no weight during training (about $10^{-3}$ at $t = 1$, section 3). The bound is a likelihood measure; it ranks
# models differently from the sample-quality measures of [chapter 07](07_evaluation.py), and a model trained for
# samples (this one) is not trained for it. Models trained on the bound itself, with learned variances
# {cite:p}`nichol2021improved` or a learned schedule {cite:p}`kingma2021vdm`, give much tighter bounds on the datasets
# those papers report (CIFAR-10 and ImageNet; neither reports MNIST).
#
# ## Summary
#
# - The toy's noised marginals are mixtures of Gaussians: density, score and every expectation are exact.
# - $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$ by completing the square; checked by fitting the
#   parabola, by regression on simulated chains, and against `ddpm_lib`'s tables.
# - $-\log p_\theta(x_0) \le L = L_T + \sum_t L_{t-1} + L_0$; with fixed variances,
#   $L_{t-1} = \lambda_t \lVert \varepsilon - \hat\varepsilon \rVert^2$, $\lambda_t = \beta_t/(2\alpha_t(1-\bar\alpha_{t-1}))$.
#   $L_\text{simple}$ sets $\lambda_t = 1$; min-SNR lowers the small-$t$ weights further.
# - `ddpm_lib.theory.variational_bound` estimates $L$ without bias (uniform $t$ times $T - 1$) with a standard error. On the
#   toy the bound lies above the exact $-\log q$ and tightens with training; for `ddpm_mnist` it is 2.121 ± 0.030 bits/dim
#   (`python -m ddpm_lib bound --weights ddpm_mnist --n 500 --t-samples 200 --seed 0`). The decoder's fixed width alone
#   costs 0.661 of its 1.084 bits/dim of $L_0$.
# - The split holds twice over: term by term along a path (the telescoping), and on average against the first form
#   of $L$ along simulated paths.
# - $\varepsilon^* = -\sqrt{1-\bar\alpha_t}\,\nabla\log q(x_t)$ (Tweedie); the trained network's score matches the exact one
#   where the data are; Langevin dynamics (annealed) samples with a score alone, and the probability-flow ODE is the
#   deterministic twin of the reverse process.
# - Small steps make the true reverse step Gaussian; with 10 steps it is not.
#
# ## Exercises
#
# :::{exercise} 3.1 · ★☆☆ · The posterior variance
# :nonumber:
#
# Section 2 found the precision of $q(x_{t-1} \mid x_t, x_0)$ as a sum, $\alpha_t/\beta_t + 1/(1-\bar\alpha_{t-1})$. Write
# `posterior_variance_from_precision(alpha_bars)` that returns $\tilde\beta_t$ for every $t \ge 1$ as the reciprocal of
# that sum (a float64 tensor of length $T - 1$), computed from $\bar\alpha$ alone.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def posterior_variance_from_precision(alpha_bars: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    alphas = alpha_bars[1:] / alpha_bars[:-1]
    precision = alphas / (1 - alphas) + 1 / (1 - alpha_bars[:-1])
    return 1 / precision
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 3.1
ours = posterior_variance_from_precision(alpha_bars64)
assert ours.shape == (T - 1,)
assert torch.allclose(ours, scheduler.posterior_variances[1:].double(), rtol=1e-5)
### BEGIN HIDDEN TESTS
short_schedule = LinearBetaScheduler(10, 0.01, 0.2)
assert torch.allclose(
    posterior_variance_from_precision(short_schedule.alpha_bars64),
    short_schedule.posterior_variances[1:].double(),
    rtol=1e-5,
)
### END HIDDEN TESTS
print("Exercise 3.1 passed")

# %% [markdown]
# :::{exercise} 3.2 · ★★☆ · One KL term with the other variance
# :nonumber:
#
# DDPM also tried $\sigma_t^2 = \beta_t$ for the reverse steps. Then the two Gaussians of $L_{t-1}$ no longer have the
# same variance, and the log and $-1$ of the KL no longer cancel. Write `kl_term_beta_variance(scheduler, t, x0, x_t, eps_hat)`
# that returns $L_{t-1}$ in nats for each row of `x0`, `x_t`, `eps_hat` (float64 tensors of shape (B, D), `t` an int
# $\ge 1$ of the code), with $p_\theta(x_{t-1} \mid x_t) = \mathcal N(\tilde\mu_t(x_t, \hat x_0), \beta_t I)$. Use the formula
# of section 3, not `gaussian_kl`. What is the term for a perfect prediction, $\hat\varepsilon = \varepsilon$, and why is it
# not 0 as it is with $\sigma_t^2 = \tilde\beta_t$?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def kl_term_beta_variance(
    scheduler, t: int, x0: torch.Tensor, x_t: torch.Tensor, eps_hat: torch.Tensor
) -> torch.Tensor:
    ### BEGIN SOLUTION
    alpha_bar, alpha_bar_prev = scheduler.alpha_bars64[t], scheduler.alpha_bars64[t - 1]
    beta = 1 - alpha_bar / alpha_bar_prev
    small = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()
    coef = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
    squared = (coef * (x0 - x0_hat)) ** 2  # the means differ only in their x_0 part
    per_coordinate = 0.5 * (torch.log(beta / small) + (small + squared) / beta - 1)
    return per_coordinate.sum(1)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 3.2
generator = torch.Generator().manual_seed(27)
for t in (1, 50, 700):
    x0, eps, eps_hat = (torch.randn((3, 2), generator=generator, dtype=torch.float64) for _ in range(3))
    x_t = alpha_bars64[t].sqrt() * x0 + (1 - alpha_bars64[t]).sqrt() * eps
    x0_hat = (x_t - (1 - alpha_bars64[t]).sqrt() * eps_hat) / alpha_bars64[t].sqrt()
    true_mean, model_mean = coef_x0[t] * x0 + coef_xt[t] * x_t, coef_x0[t] * x0_hat + coef_xt[t] * x_t
    reference = gaussian_kl(true_mean, posterior_variance[t], model_mean, 1 - alphas64[t]).sum(1)
    assert torch.allclose(kl_term_beta_variance(scheduler, t, x0, x_t, eps_hat), reference, rtol=1e-8), t
### BEGIN HIDDEN TESTS
ratio = (1 - alphas64[t]) / posterior_variance[
    t
]  # beta / beta~: with the perfect eps_hat only the variances differ
perfect = kl_term_beta_variance(scheduler, t, x0, x_t, eps)
assert torch.allclose(perfect, (torch.log(ratio) + 1 / ratio - 1).expand(3), rtol=1e-8)  # 2 coordinates x 1/2
### END HIDDEN TESTS
print("Exercise 3.2 passed")

# %% [markdown]
# **Your answer (3.2, 1 point, graded by hand).** What is the term for a perfect prediction, and why is it not 0?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# With ε̂ = ε the two means agree and only the variances differ, so each coordinate gives
# ½ [log(β_t / β̃_t) + β̃_t / β_t − 1] > 0 (x − 1 − log x > 0 for x = β̃_t / β_t ≠ 1). The model's step is wider than the
# true posterior however good its mean; with σ_t² = β̃_t the two Gaussians coincide and the KL is 0.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: gives ½[log(β_t/β̃_t) + β̃_t/β_t − 1] per coordinate, positive because the variances differ (x − 1 − log x > 0), and 0 only when σ² = β̃.
# - **½ point**: says only the variances differ so the KL stays positive, without the expression.
# - **0**: says the term is 0, or attributes it to the means.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 3.3 · ★★★ · Langevin's bias, and the Metropolis correction
# :nonumber:
#
# Section 5's `langevin` samples the density only in the limit of small steps: with a finite step $\delta$ its points
# settle into a slightly wrong distribution. The **Metropolis-adjusted Langevin algorithm** (MALA) removes that bias:
# treat the Langevin update as a *proposal* $y = x + \frac{\delta}{2}\,\nabla\log\pi(x) + \sqrt\delta\,z$, whose density
# given $x$ is $g(y \mid x) = \mathcal N\big(y;\ x + \frac{\delta}{2}\nabla\log\pi(x),\ \delta I\big)$, and accept it with probability
# $\min\big(1,\ \pi(y)\,g(x \mid y) / (\pi(x)\,g(y \mid x))\big)$; a rejected point stays where it was.
#
# Write `mala_step(x, log_prob, score, step_size, generator)` for points `x` (N, D): draw $z$ with
# `torch.randn(x.shape, generator=generator, dtype=x.dtype)`, then one uniform number per point with
# `torch.rand(len(x), generator=generator, dtype=x.dtype)`, accept where its log is below the log of the ratio, and return
# the new points and the boolean tensor of acceptances. Raise a `ValueError` naming `step_size` unless it is positive.
# The check runs both samplers on a Gaussian with a step that is large for it. Then answer in the cell after the check: why are the
# plain Langevin points too spread out (hint: in one dimension, with $\pi = \mathcal N(0, c)$, find the variance that
# the update $x \mapsto (1 - \frac{\delta}{2c})\,x + \sqrt\delta\,z$ keeps), and what does the acceptance rate do as $\delta$ grows?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def mala_step(
    x: torch.Tensor, log_prob, score, step_size: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    ### BEGIN SOLUTION
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")

    def log_proposal(to: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        mean = start + 0.5 * step_size * score(start)
        return -((to - mean) ** 2).sum(1) / (2 * step_size)  # the constant cancels in the ratio

    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    proposal = x + 0.5 * step_size * score(x) + math.sqrt(step_size) * z
    log_ratio = log_prob(proposal) - log_prob(x) + log_proposal(x, proposal) - log_proposal(proposal, x)
    accepted = torch.rand(len(x), generator=generator, dtype=x.dtype).log() < log_ratio
    return torch.where(accepted[:, None], proposal, x), accepted
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 3.3
target_mean = torch.tensor([0.5, -0.3], dtype=torch.float64)
target_covariance = torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=torch.float64)
target = torch.distributions.MultivariateNormal(target_mean, target_covariance)
precision = torch.linalg.inv(target_covariance)
gaussian_score = lambda x: -(x - target_mean) @ precision  # noqa: E731  (precision is symmetric)
start = torch.zeros((8000, 2), dtype=torch.float64)
generator = torch.Generator().manual_seed(28)
plain_points, mala_points, acceptance = langevin(gaussian_score, start, 0.05, 400, generator), start, []
for _ in range(400):
    mala_points, accepted = mala_step(mala_points, target.log_prob, gaussian_score, 0.05, generator)
    acceptance.append(accepted.double().mean().item())
for name, points in (("plain Langevin", plain_points), ("MALA", mala_points)):
    print(f"{name:>14}: covariance {[round(v, 4) for v in torch.cov(points.T).flatten().tolist()]}")
print(
    f"{'target':>14}: covariance {target_covariance.flatten().tolist()}; MALA accepted {sum(acceptance) / 400:.1%}"
)
assert (torch.cov(plain_points.T) - target_covariance).abs().max() > 0.01  # the plain step's bias shows ...
assert (mala_points.mean(0) - target_mean).abs().max() < 0.02
assert (torch.cov(mala_points.T) - target_covariance).abs().max() < 0.008  # ... and MALA removes it
### BEGIN HIDDEN TESTS
start = torch.ones((2, 2), dtype=torch.float64)
generator = torch.Generator().manual_seed(29)
z = torch.randn((2, 2), generator=generator, dtype=torch.float64)
u = torch.rand(2, generator=generator, dtype=torch.float64)
proposal = start + 0.5 * 0.04 * gaussian_score(start) + 0.2 * z
forward_mean, backward_mean = (
    start + 0.02 * gaussian_score(start),
    proposal + 0.02 * gaussian_score(proposal),
)
log_ratio = (
    target.log_prob(proposal) - target.log_prob(start)
    - ((start - backward_mean) ** 2).sum(1) / 0.08 + ((proposal - forward_mean) ** 2).sum(1) / 0.08
)  # fmt: skip
moved, accepted = mala_step(start, target.log_prob, gaussian_score, 0.04, torch.Generator().manual_seed(29))
assert torch.equal(accepted, u.log() < log_ratio)
assert torch.allclose(moved, torch.where(accepted[:, None], proposal, start))
try:
    mala_step(start, target.log_prob, gaussian_score, 0.0)
except ValueError as error:
    assert "step_size" in str(error)
else:
    raise AssertionError("step_size = 0 was accepted")
### END HIDDEN TESTS
print("Exercise 3.3 passed")

# %% [markdown]
# **Your answer (3.3, 1 point, graded by hand).** Why are the plain Langevin points too spread out, and what does the acceptance rate do as δ grows?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# The update keeps the variance v with v = (1 − δ/(2c))² v + δ, so v = c / (1 − δ/(4c)): too wide by
# a factor that grows with δ/c (about 18% for the check's narrowest direction). MALA's accept/reject step makes π
# exactly stationary for any δ, so the bias is gone; the price is the acceptance rate, which falls as δ grows
# (the proposal overshoots more often), so large steps waste work on rejected moves.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: solves v = (1 − δ/(2c))² v + δ to v = c/(1 − δ/(4c)) > c, and says MALA's correction removes the bias at the price of an acceptance rate that falls as δ grows.
# - **½ point**: one of the two parts right (the variance, or the acceptance rate's trend with a reason).
# - **0**: neither part, or a bias blamed on too few steps.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
