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
# # 01 · The noise schedule
#
# A diffusion model learns to undo a process that slowly drowns an image in Gaussian noise. Everything
# about that process is fixed in advance by one sequence of numbers, the **noise schedule**
# $\beta_0, \dots, \beta_{T-1}$. This chapter builds it.
#
# **After this chapter you can**
#
# - compute $\beta_t$, $\alpha_t$, $\bar\alpha_t$, the posterior variance $\tilde\beta_t$ and the
#   signal-to-noise ratio from $\beta_{\text{start}}$, $\beta_{\text{end}}$ and $T$;
# - explain, with a number, why $x_T$ is almost pure noise when $\bar\alpha_{T-1} \approx 4\cdot10^{-5}$;
# - use `ddpm_lib.schedule.LinearBetaScheduler`, the class this chapter promotes into the course package.
#
# **Notation.** Timesteps run from $0$ to $T-1$, as in the code and the reference implementation:
# the noising step with index $t$ uses $\beta_t$, and $\bar\alpha_t = \prod_{s=0}^{t} (1-\beta_s)$ is the
# share of signal power left **after** step $t$. (The DDPM paper counts $1..T$; subtract one to translate.)
# The [notation](../notation.md) page lists every symbol of the course, and where the paper's differ.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import math

import matplotlib.pyplot as plt
import torch

from ddpm_lib.plotting import save_figure
from ddpm_lib.profile import PROFILE

torch.manual_seed(0)
print(f"profile: {PROFILE.name}")

# %% [markdown]
# ## 1. Three sequences from one
#
# DDPM {cite:p}`ho2020ddpm`, building on {cite:t}`sohl2015deep`, adds noise in $T = 1000$ small steps. Step $t$ keeps a share $\alpha_t$ of the
# signal's power and adds fresh noise of variance $\beta_t$:
#
# $$ q(x_{t} \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1-\beta_t}\,x_{t-1},\; \beta_t I\right), \qquad \alpha_t = 1 - \beta_t .$$
#
# The **linear schedule** spaces $\beta_t$ evenly from $\beta_{\text{start}} = 10^{-4}$ to
# $\beta_{\text{end}} = 0.02$. Small steps at first keep fine detail long enough for the network to
# learn it; larger steps later finish the job. Multiplying the per-step signal shares gives the
# **cumulative** share
#
# $$ \bar\alpha_t = \prod_{s=0}^{t} \alpha_s , $$
#
# which, as [chapter 02](02_forward_process.py) shows, is all we need to jump from $x_0$ to any $x_t$ in one go.

# %%
T = 1000
beta_start, beta_end = 1e-4, 0.02

betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
alphas = 1.0 - betas
alpha_bars = torch.cumprod(alphas, dim=0)

print(f"beta_0 = {betas[0]:.4g}, beta_{T - 1} = {betas[-1]:.4g}")
print(
    f"alpha_bar_0 = {alpha_bars[0]:.6f}, alpha_bar_499 = {alpha_bars[499]:.6f}, "
    f"alpha_bar_{T - 1} = {alpha_bars[-1]:.4e}"
)
assert torch.all(betas[1:] > betas[:-1])  # increasing
assert torch.all(alpha_bars[1:] < alpha_bars[:-1])  # the signal only ever shrinks
assert math.isclose(alpha_bars[-1].item(), 4.0358e-5, rel_tol=1e-3)

# %% [markdown]
# **How precise is float32?** $\bar\alpha_{T-1}$ is a product of 1000 numbers, and each float32
# multiply can lose about $6\cdot10^{-8}$ of relative precision. The reference implementation and
# Hugging Face `diffusers` both multiply in float32; the cell below measures what that costs against
# the float64 product — and where float32 really hurts: $1-\bar\alpha_t$ near $t=0$, where subtracting
# two nearly equal numbers wipes out most digits (*catastrophic cancellation*).

# %%
alpha_bars_f32 = torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, T), dim=0)
relative_error = ((alpha_bars_f32.double() - alpha_bars) / alpha_bars).abs().max().item()
one_minus_error = ((1 - alpha_bars_f32[0].double()) - (1 - alpha_bars[0])).abs() / (1 - alpha_bars[0])
print(f"float32 cumprod: largest relative error of alpha_bar = {relative_error:.1e}")
print(f"float32: relative error of 1 - alpha_bar_0 = {one_minus_error:.1e}")
assert relative_error < 1e-6 and one_minus_error > 100 * relative_error

# %% [markdown]
# So the scheduler class below computes $\beta$, $\alpha$ and $\bar\alpha$ in float32 exactly as
# `diffusers` does (our tests compare against it), and computes everything that divides by
# $1-\bar\alpha_t$ in float64 from the exact schedule before storing it as float32.

# %% [markdown]
# ## 2. Two more quantities the model needs
#
# **Posterior variance.** When we later *reverse* the process, we need the distribution of
# $x_{t-1}$ given both $x_t$ and $x_0$. It is Gaussian with variance (DDPM eq. 7)
#
# $$ \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t , \qquad \bar\alpha_{-1} := 1 , $$
#
# so $\tilde\beta_0 = 0$: the last reverse step adds no noise. (Its mean, which [chapter 06](06_sampling.py) needs, is
# $\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0 + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t$;
# the class below stores both coefficients.) Note the convention $\bar\alpha_{-1} = 1$
# ("before any step, all the signal is there"). Reading `alpha_bars[t - 1]` at $t = 0$ would silently
# fetch `alpha_bars[-1]`, the **last** element — a bug in the reference implementation this course
# teaches. We build a shifted table `alpha_bars_prev` instead.
#
# **Signal-to-noise ratio.** $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ carries signal
# power $\bar\alpha_t$ and noise power $1-\bar\alpha_t$, so
#
# $$ \mathrm{SNR}(t) = \frac{\bar\alpha_t}{1-\bar\alpha_t} . $$

# %%
alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
posterior_variances = (1 - alpha_bars_prev) / (1 - alpha_bars) * betas
snr = alpha_bars / (1 - alpha_bars)

print(f"posterior variance at t=0: {posterior_variances[0]:.1f}, at t=1: {posterior_variances[1]:.3e}")
print(f"SNR at t=0: {snr[0]:.1f}; at t={T - 1}: {snr[-1]:.2e}")
assert posterior_variances[0] == 0
assert torch.all(posterior_variances <= betas)  # the posterior is never wider than one step's noise
assert math.isclose(snr[0].item(), (1 - 1e-4) / 1e-4, rel_tol=1e-9)

# %% [markdown]
# ## 3. What the schedule looks like
#
# The four panels below are drawn from the tensors above; the cell after them checks, with numbers,
# what each panel shows.

# %%
timesteps = torch.arange(T)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
axes[0].plot(timesteps, betas, label=r"$\beta_t$")
axes[0].plot(timesteps, posterior_variances, "--", label=r"$\tilde\beta_t$")
axes[0].set_title(r"per-step noise $\beta_t$ and posterior $\tilde\beta_t$")
axes[0].legend()
axes[1].plot(timesteps, alpha_bars, label=r"$\bar\alpha_t$")
axes[1].plot(timesteps, alpha_bars.sqrt(), label=r"$\sqrt{\bar\alpha_t}$ (signal coeff.)")
axes[1].plot(timesteps, (1 - alpha_bars).sqrt(), label=r"$\sqrt{1-\bar\alpha_t}$ (noise coeff.)")
axes[1].set_title("cumulative signal and noise")
axes[1].legend(fontsize=8)
axes[2].plot(timesteps[1:], (posterior_variances / betas)[1:])
axes[2].set_title(r"$\tilde\beta_t / \beta_t$")
axes[3].semilogy(timesteps, snr)
axes[3].axhline(1.0, color="grey", lw=0.8)
axes[3].set_title(r"SNR$(t) = \bar\alpha_t / (1-\bar\alpha_t)$")
for ax in axes:
    ax.set_xlabel("t")
fig.tight_layout()
save_figure(fig, "01_noise_schedule")
plt.show()

# %%
t_half = int(torch.nonzero(alpha_bars < 0.5)[0])
t_snr_one = int(torch.nonzero(snr < 1)[0])
ratio_at_100 = (posterior_variances[100] / betas[100]).item()
print(f"alpha_bar falls below 1/2 at t = {t_half}; SNR falls below 1 at t = {t_snr_one}")
print(f"posterior/forward variance ratio at t=100: {ratio_at_100:.4f}")
print(f"log10 SNR spans {snr.log10().max():.2f} .. {snr.log10().min():.2f}")
assert t_half == t_snr_one  # SNR = 1 exactly where alpha_bar = 1/2
assert 0.98 < ratio_at_100 < 1.0  # from t = 100 on, the two variances agree within 2%

# %% [markdown]
# Read the panels left to right: $\beta_t$ is a straight line; $\tilde\beta_t$ hugs it except in the
# first hundred or so steps (third panel). The signal coefficient $\sqrt{\bar\alpha_t}$ crosses the noise
# coefficient where $\bar\alpha_t = 1/2$ — the cell above prints where — and the SNR falls
# through eight orders of magnitude, roughly log-linearly in the middle.
#
# ## 4. Why $x_T$ is (almost) pure noise
#
# Sampling starts from $x_T \sim \mathcal N(0, I)$, not from $q(x_T \mid x_0)$. That is only
# legitimate if the two are practically the same. With $\bar\alpha = \bar\alpha_{T-1}$ a pixel of value
# $x_0 \in [-1, 1]$ ends as $\mathcal N(\sqrt{\bar\alpha}\,x_0,\, 1-\bar\alpha)$, and the KL divergence to
# $\mathcal N(0, 1)$ is
#
# $$ D_{\mathrm{KL}} = \tfrac12\left(\bar\alpha x_0^2 - \bar\alpha - \ln(1-\bar\alpha)\right) \le \tfrac12\left(-\ln(1-\bar\alpha)\right) \approx \bar\alpha/2 .$$
#
# This is the term $L_T$ of DDPM's variational bound ([chapter 03](03_theory.py) derives the bound). It contains no
# parameters, whatever its size: no choice of network changes it, so training ignores it either way. What its
# *smallness* buys is the start of sampling. We cannot draw from $q(x_T \mid x_0)$ without knowing the $x_0$
# we are trying to generate; a tiny $L_T$ says that $\mathcal N(0, I)$ is as good a start, for every digit.


# %%
def kl_to_standard_normal(alpha_bar: float, x0: float = 1.0) -> float:
    """KL( N(sqrt(a) x0, 1 - a) || N(0, 1) ) for one pixel, in nats."""
    return 0.5 * (alpha_bar * x0**2 - alpha_bar - math.log(1 - alpha_bar))


alpha_bar_T = alpha_bars[-1].item()
per_pixel = kl_to_standard_normal(alpha_bar_T)
print(f"signal coefficient sqrt(alpha_bar_T) = {math.sqrt(alpha_bar_T):.5f}")
print(f"KL per pixel <= {per_pixel:.2e} nats; per 28x28 image <= {784 * per_pixel:.3f} nats")

short = torch.cumprod(1 - torch.linspace(beta_start, beta_end, 100, dtype=torch.float64), 0)[-1].item()
print(
    f"same betas but only T=100 steps: alpha_bar = {short:.3f}, "
    f"KL per image <= {784 * kl_to_standard_normal(short):.1f} nats"
)
assert 784 * per_pixel < 0.05
assert 784 * kl_to_standard_normal(short) > 100

# %% [markdown]
# A signal coefficient well under one percent and a KL of a few hundredths of a nat per image:
# $x_T$ is practically indistinguishable from pure noise, and starting the sampler from $\mathcal N(0, I)$
# costs almost nothing. With the same $\beta$ range over only 100 steps, the last image would still hold most
# of its signal — the schedule and $T$ go together.
#
# ## 5. The scheduler class (promoted to `ddpm_lib.schedule`)
#
# The reference implementation packs these tables into `LinearBetaScheduler` with three getters,
# `get_variance(t)` ($\beta_t$), `get_alpha(t)` ($\alpha_t$) and `get_bar_alpha(t)` ($\bar\alpha_t$).
# We keep its names and add what the later chapters need, in two classes: `NoiseSchedule` derives every
# table from a sequence of $\beta$ ([chapter 09](09_cosine_schedule.py) builds the cosine schedule on it, and every sampler works
# with either), and `LinearBetaScheduler` makes $\beta$ the reference's way. Cells that start with
# `#| export` are copied into the package by `python tools/promote.py`; this chapter is their only source.

# %%
#| default_exp schedule
#| export
import math  # chapter 09's cosine schedule
import numbers

import torch


# %%
#| export
class NoiseSchedule:
    r"""Every table the course derives from a sequence of noise variances β_0..β_{T−1}.

    ``betas`` (float32, length T, values in (0, 1]) is used exactly as given; ``betas64``, the same
    sequence in float64 (default: ``betas`` cast up), feeds the tables that divide by 1 − ᾱ_t. All
    tables are float32 tensors of length T on the CPU, index t = 0..T−1:

    - ``betas``: β_t, the noise variance added by step t;
    - ``alphas``: α_t = 1 − β_t;
    - ``alpha_bars``: ᾱ_t = ∏_{s ≤ t} α_s, the share of signal power left after step t;
    - ``alpha_bars_prev``: ᾱ_{t−1}, with ᾱ_{−1} = 1 (never wraps around to ᾱ_{T−1});
    - ``posterior_variances``: β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t, so β̃_0 = 0;
    - ``posterior_mean_coef_x0``, ``posterior_mean_coef_xt``: the posterior mean
      μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t (1 and 0 at t = 0);
    - ``snr``: ᾱ_t / (1 − ᾱ_t).

    ``alpha_bars64`` keeps ᾱ_t in float64: the reverse steps of chapters 06 and 08 compute their
    coefficients from it, since 1 − ᾱ_t/ᾱ_s loses digits in float32 for nearby t and s.

    Subclasses only choose β: :class:`LinearBetaScheduler` here, the cosine schedule in chapter 09.
    Every sampler reads these tables, so it works with any schedule.
    """

    def __init__(self, betas: torch.Tensor, betas64: torch.Tensor | None = None):
        if not isinstance(betas, torch.Tensor) or betas.dim() != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a 1-D tensor with at least one entry, got {betas!r}")
        if not betas.is_floating_point() or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be floating-point values in (0, 1]")
        betas64 = betas.double() if betas64 is None else betas64.double()
        if betas64.shape != betas.shape:
            raise ValueError(
                f"betas64 must have the shape of betas {tuple(betas.shape)}, got {tuple(betas64.shape)}"
            )
        self.num_timesteps = len(betas)

        # beta, alpha, alpha_bar in float32, exactly as the reference and diffusers compute them
        self.betas = betas.float().clone()
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1), self.alpha_bars[:-1]])
        # 1 - alpha_bar loses most digits in float32 near t = 0: derive these from the float64 schedule
        alpha_bars64 = torch.cumprod(1.0 - betas64, dim=0)
        self.alpha_bars64 = alpha_bars64  # float64: the samplers' coefficients (chapter 06) read it
        alpha_bars_prev64 = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars64[:-1]])
        self.posterior_variances = ((1.0 - alpha_bars_prev64) / (1.0 - alpha_bars64) * betas64).float()
        self.posterior_mean_coef_x0 = (alpha_bars_prev64.sqrt() * betas64 / (1.0 - alpha_bars64)).float()
        self.posterior_mean_coef_xt = (
            (1.0 - betas64).sqrt() * (1.0 - alpha_bars_prev64) / (1.0 - alpha_bars64)
        ).float()
        self.snr = (alpha_bars64 / (1.0 - alpha_bars64)).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_timesteps={self.num_timesteps})"

    def __len__(self) -> int:
        return self.num_timesteps

    def check_timesteps(self, t) -> torch.Tensor:
        """Return ``t`` as an int64 tensor after checking it holds integers in 0..T-1."""
        if isinstance(t, bool):
            raise ValueError(f"t must be an integer timestep or tensor of them, got {t!r}")
        if isinstance(t, numbers.Integral):
            t = torch.tensor(int(t))
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be an integer or an integer tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
        t = t.long()  # before comparing: 1000 does not fit in an int8 tensor
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(
                f"t must lie in 0..{self.num_timesteps - 1}, got values from {int(t.min())} to {int(t.max())}"
            )
        return t

    def _lookup(self, table: torch.Tensor, t) -> torch.Tensor:
        t = self.check_timesteps(t)
        return table.to(t.device)[t]

    def get_variance(self, t) -> torch.Tensor:
        """β_t for every entry of ``t`` (same shape and device as ``t``)."""
        return self._lookup(self.betas, t)

    def get_alpha(self, t) -> torch.Tensor:
        """α_t = 1 − β_t for every entry of ``t``."""
        return self._lookup(self.alphas, t)

    def get_bar_alpha(self, t) -> torch.Tensor:
        """ᾱ_t = ∏_{s ≤ t} α_s for every entry of ``t``."""
        return self._lookup(self.alpha_bars, t)

    def get_bar_alpha_prev(self, t) -> torch.Tensor:
        """ᾱ_{t−1} for every entry of ``t``, with ᾱ_{−1} = 1 at t = 0."""
        return self._lookup(self.alpha_bars_prev, t)

    def get_posterior_variance(self, t) -> torch.Tensor:
        """β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t for every entry of ``t``."""
        return self._lookup(self.posterior_variances, t)


# %% [markdown]
# The base class holds everything that follows from $\beta$; the reference's `LinearBetaScheduler`
# only has to say how $\beta$ is made.


# %%
#| export
class LinearBetaScheduler(NoiseSchedule):
    r"""The linear noise schedule of DDPM (Ho et al., 2020): β_t = linspace(β_start, β_end, T)[t].

    The tables of :class:`NoiseSchedule`; β, α and ᾱ are computed in float32 as in the reference and
    diffusers; the posterior tables and the SNR, which divide by 1 − ᾱ_t, in float64 (stored as float32).
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, numbers.Integral):
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
        if beta_start > beta_end:
            raise ValueError(f"beta_start ({beta_start}) must not exceed beta_end ({beta_end})")
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        steps = int(num_timesteps)
        super().__init__(
            torch.linspace(self.beta_start, self.beta_end, steps, dtype=torch.float32),
            torch.linspace(self.beta_start, self.beta_end, steps, dtype=torch.float64),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_timesteps={self.num_timesteps}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end})"
        )


# %% [markdown]
# The class must agree with the tables we built by hand, and its getters must accept timesteps of any
# shape — a batch of random $t$ during training, one scalar $t$ during sampling.

# %%
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
print(scheduler)
assert torch.allclose(scheduler.alpha_bars.double(), alpha_bars, rtol=1e-6, atol=0)
assert torch.allclose(scheduler.posterior_variances.double(), posterior_variances, rtol=1e-6, atol=0)
t = torch.randint(0, T, (4, 3))
assert scheduler.get_bar_alpha(t).shape == t.shape
assert scheduler.get_bar_alpha_prev(torch.tensor(0)) == 1.0  # no wrap-around at t = 0
# at t = 0 the posterior mean is x_0 itself
assert scheduler.posterior_mean_coef_x0[0] == 1.0 and scheduler.posterior_mean_coef_xt[0] == 0.0
print("get_bar_alpha(tensor([0, 499, 999])) =", scheduler.get_bar_alpha(torch.tensor([0, 499, 999])))

# %% [markdown]
# Bad arguments fail early, with a message that names the argument:

# %%
for bad in [dict(num_timesteps=0), dict(beta_start=0.0), dict(beta_start=0.03, beta_end=0.02)]:
    try:
        LinearBetaScheduler(**bad)
    except ValueError as error:
        print(f"{bad}: {error}")
    else:
        raise AssertionError(f"{bad} was accepted")
for bad_t in [torch.tensor([1000]), torch.tensor([0.5]), -1]:
    try:
        scheduler.get_variance(bad_t)
    except ValueError as error:
        print(f"t={bad_t!r}: {error}")
    else:
        raise AssertionError(f"t={bad_t!r} was accepted")

# %% [markdown]
# ## Summary
#
# - One increasing sequence $\beta_t$ fixes the whole forward process; $\alpha_t = 1-\beta_t$ and
#   $\bar\alpha_t = \prod_{s\le t}\alpha_s$ follow from it.
# - $\bar\alpha_t$ is the share of signal power left after step $t$; with the linear schedule it falls to
#   $\approx 4\cdot10^{-5}$, so $x_T$ is pure noise to within a few hundredths of a nat per image ($L_T$), which
#   is what lets sampling start from $\mathcal N(0, I)$.
# - The posterior variance $\tilde\beta_t$ needs $\bar\alpha_{t-1}$, with $\bar\alpha_{-1}=1$ — never
#   `alpha_bars[t - 1]` at $t = 0$.
# - `ddpm_lib.schedule.LinearBetaScheduler` holds the tables and checks its inputs.
#
# ## Exercises
#
# Each exercise has a cell for your solution and, right after it, a cell that checks it (its first
# line is `# Check`). The solution between the two marker comments is ours: try
# the exercise before you read it. In the student copies an instructor hands out, it is replaced by
# `raise NotImplementedError()`, and the check fails until you write your own.
#
# :::{exercise} 1.1 · ★☆☆ · Reading the SNR backwards
# :nonumber:
#
# Later chapters often describe a noise level by its signal-to-noise ratio rather than by $t$. Write
# `alpha_bar_from_snr(snr)`: the $\bar\alpha$ that has a given $\mathrm{SNR} = \bar\alpha/(1-\bar\alpha)$, for a
# tensor of SNR values. Then answer: how much of the signal's *amplitude* $\sqrt{\bar\alpha}$ is left when signal
# and noise have equal power ($\mathrm{SNR} = 1$)? When the noise has 100 times the signal's power?
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def alpha_bar_from_snr(snr: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return snr / (1 + snr)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 1.1
assert torch.allclose(alpha_bar_from_snr(snr), alpha_bars, rtol=1e-9)  # the float64 tables of section 2
assert math.isclose(alpha_bar_from_snr(torch.tensor(1.0)).item(), 0.5)
print(f"amplitude left at SNR = 1: {alpha_bar_from_snr(torch.tensor(1.0)).sqrt():.3f}; "
      f"at SNR = 0.01: {alpha_bar_from_snr(torch.tensor(0.01)).sqrt():.3f}")  # fmt: skip
### BEGIN HIDDEN TESTS
assert math.isclose(alpha_bar_from_snr(torch.tensor(4.0)).item(), 0.8, rel_tol=1e-6)
### END HIDDEN TESTS
print("Exercise 1.1 passed")

# %% [markdown]
# **Your answer (1.1, 1 point, graded by hand).** How much of the signal's amplitude is left at SNR = 1, and at SNR = 0.01?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# Solve SNR (1 − ᾱ) = ᾱ for ᾱ: ᾱ = SNR / (1 + SNR). At SNR = 1, ᾱ = 1/2 and the amplitude left
# is √(1/2) ≈ 0.71: equal power does not mean half the amplitude. At SNR = 0.01, ᾱ = 1/101 and the amplitude
# is still about 0.10 — a tenth of the digit survives under noise with a hundred times its power.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: derives ᾱ = SNR/(1 + SNR) and gives both amplitudes, √(1/2) ≈ 0.71 and √(1/101) ≈ 0.10, noting that equal power is not half the amplitude.
# - **½ point**: the formula right but one amplitude wrong or missing, or ᾱ given instead of √ᾱ.
# - **0**: no formula, or amplitudes read as ᾱ = SNR.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 1.2 · ★★☆ · The half-life of the signal
# :nonumber:
#
# Write `first_timestep_below(scheduler, level)` that returns the smallest $t$ with
# $\bar\alpha_t < \text{level}$ as a Python `int`, and `None` if $\bar\alpha_t$ never falls below `level`.
# Hint: `torch.nonzero` or `torch.searchsorted` on the (decreasing) table.
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def first_timestep_below(scheduler: LinearBetaScheduler, level: float) -> int | None:
    ### BEGIN SOLUTION
    below = torch.nonzero(scheduler.alpha_bars < level)
    return int(below[0]) if len(below) else None
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 1.2
assert first_timestep_below(scheduler, 0.5) == t_half
assert first_timestep_below(scheduler, 1e-9) is None
### BEGIN HIDDEN TESTS
assert first_timestep_below(scheduler, 1.0) == 0
small = LinearBetaScheduler(10, 0.1, 0.2)
assert first_timestep_below(small, 0.5) == next(t for t, a in enumerate(small.alpha_bars.tolist()) if a < 0.5)
### END HIDDEN TESTS
print("Exercise 1.2 passed")

# %% [markdown]
# :::{exercise} 1.3 · ★★★ · Fewer, larger steps
# :nonumber:
#
# Training with $T = 1000$ and sampling with fewer steps is [chapter 08](08_fast_sampling.py)'s topic; here, build a schedule
# with fewer steps directly. Improved DDPM {cite:p}`nichol2021improved` keeps the *endpoint* of the linear
# schedule by scaling both ends by $1000/T$. Write `scaled_linear_scheduler(num_timesteps)` returning a
# `LinearBetaScheduler` with $\beta_{\text{start}} = 10^{-4}\cdot 1000/T$ and
# $\beta_{\text{end}} = 0.02\cdot 1000/T$. The check asks that $\log\bar\alpha_{T-1}$ stays within 5% of
# the 1000-step value for $T = 250$. Then answer in the cell after the check: why does the approximation
# get worse as $T$ shrinks? (Hint: $\log(1-\beta) \approx -\beta - \beta^2/2$.)
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def scaled_linear_scheduler(num_timesteps: int) -> LinearBetaScheduler:
    ### BEGIN SOLUTION
    scale = 1000 / num_timesteps
    return LinearBetaScheduler(num_timesteps, 1e-4 * scale, 0.02 * scale)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 1.3
short_schedule = scaled_linear_scheduler(250)
assert len(short_schedule) == 250
log_ratio = math.log(short_schedule.alpha_bars[-1]) / math.log(scheduler.alpha_bars[-1])
print(f"log alpha_bar_T (T=250) / log alpha_bar_T (T=1000) = {log_ratio:.4f}")
assert abs(log_ratio - 1) < 0.05
### BEGIN HIDDEN TESTS
assert math.isclose(scaled_linear_scheduler(1000).alpha_bars[-1].item(), scheduler.alpha_bars[-1].item())
assert math.isclose(scaled_linear_scheduler(500).betas[-1].item(), 0.04, rel_tol=1e-6)
### END HIDDEN TESTS
print("Exercise 1.3 passed")

# %% [markdown]
# **Your answer (1.3, 1 point, graded by hand).** Why does the approximation get worse as T shrinks?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# log ᾱ_{T−1} = Σ_t log(1 − β_t) ≈ −Σ_t β_t − ½ Σ_t β_t². Scaling every β by 1000/T keeps the first
# sum (T terms, each 1000/T times larger) equal to the 1000-step value. The second sum does not stay put:
# T terms, each (1000/T)² times larger, so it grows like 1000²/T. The fewer the steps, the larger each β and the
# more the β² term pushes log ᾱ_{T−1} below the 1000-step endpoint (T = 250: β_end = 0.08, a 2% shift: the check prints the ratio).
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: uses log(1 − β) ≈ −β − β²/2: the first-order sum is kept by the scaling, the second-order sum grows like 1000²/T, so fewer (larger) steps push log ᾱ further off.
# - **½ point**: says larger β make the linear approximation of log(1 − β) worse, without saying which sum is kept and which grows.
# - **0**: restates that the check's ratio moves away from 1, or blames rounding.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
