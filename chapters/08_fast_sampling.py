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
# # 08 · Fast sampling: DDIM and DPM-Solver++
#
# [Chapter 06](06_sampling.py)'s samplers call the network once per timestep: 1000 network function evaluations
# (**NFE**) per digit. This chapter gets comparable digits from 10–50 NFE with the *same* trained
# network, and measures what is lost with [chapter 07](07_evaluation.py)'s Fréchet distance {cite:p}`heusel2017fid`. Symbols are
# those of the [notation](../notation.md) page.
#
# **After this chapter you can**
#
# - derive DDIM {cite:p}`song2021ddim` from the $\hat x_0$ parameterisation, and say what its $\eta$ does
#   ($\eta = 0$: deterministic; $\eta = 1$: DDPM on a shorter chain);
# - choose a sub-sequence of timesteps (*leading*, *trailing*, *linspace* spacing) and explain why
#   leading spacing never starts from pure noise {cite:p}`lin2024flawed`;
# - run DDPM itself on a shorter chain, with the $\beta$ the shorter chain needs {cite:p}`nichol2021improved`;
# - implement DPM-Solver++(2M) {cite:p}`lu2022dpmsolverpp`, a second-order solver of the probability-flow
#   ODE of [chapter 03](03_theory.py) that reuses the previous step's prediction;
# - plot quality against the number of network evaluations and pick a sampler for a budget;
# - sample from the command line: `python -m ddpm_lib sample --sampler ddim --steps 50`.
#
# Every sampler here is cross-checked against Hugging Face `diffusers` (`DDIMScheduler`,
# `DDPMScheduler`, `DPMSolverMultistepScheduler`) in `tests/test_fast_sampling.py`.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import prediction_of
from ddpm_lib.generation import DEFAULT_STEPS, SampleSpec, generate
from ddpm_lib.metrics import baseline_images, classify, evaluate_images, features_distance, format_table
from ddpm_lib.plotting import save_figure
from ddpm_lib.pretrained import load_classifier, load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import grid_image, reverse_step, sample
from ddpm_lib.unet import Conditioned

torch.manual_seed(0)
model, scheduler, provenance = load_pretrained()
model.requires_grad_(False)
classifier, classifier_provenance = load_classifier()
T = scheduler.num_timesteps
print(f"profile: {PROFILE.name}; shipped denoiser: {provenance['summary']}")

# %% [markdown]
# ## 1. DDIM from the $\hat x_0$ parameterisation
#
# The training objective of [chapter 05](05_training.py) only ever looked at the marginals
# $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I)$: a noisy image and the noise in it.
# It never used the chain $x_0 \to x_1 \to \dots \to x_T$. So any reverse process that respects those
# marginals can use the same network, including one that jumps from $t$ straight to an earlier $s < t$.
#
# At $x_t$ the network gives $\hat\varepsilon = \varepsilon_\theta(x_t, t)$ and with it the estimate of the clean
# image ([chapter 06](06_sampling.py))
#
# $$ \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon}{\sqrt{\bar\alpha_t}} . $$
#
# If these were exact, $x_s = \sqrt{\bar\alpha_s}\,x_0 + \sqrt{1-\bar\alpha_s}\,\varepsilon$ would have the right
# marginal. DDIM keeps the same total noise variance $1-\bar\alpha_s$ but splits it into a part along the
# *known* direction $\hat\varepsilon$ and a part of fresh noise $z \sim \mathcal N(0, I)$:
#
# $$ x_s = \sqrt{\bar\alpha_s}\,\hat x_0 \;+\; \sqrt{1-\bar\alpha_s-\sigma^2}\,\hat\varepsilon \;+\; \sigma z . $$
#
# The two noise terms are independent, so $x_s$ has variance $1-\bar\alpha_s$ around $\sqrt{\bar\alpha_s}\,x_0$
# for *every* $\sigma^2 \le 1-\bar\alpha_s$: a whole family of samplers ({cite:t}`song2021ddim`, eq. 12). DDIM
# indexes it by $\eta$:
#
# $$ \sigma_{t\to s}(\eta) = \eta\,\sqrt{\frac{1-\bar\alpha_s}{1-\bar\alpha_t}}\,\sqrt{1-\frac{\bar\alpha_t}{\bar\alpha_s}} . $$
#
# - $\eta = 1$: $\sigma^2$ is the posterior variance $\tilde\beta$ of the chain that jumps from $t$ to $s$, and
#   the update *is* DDPM's ancestral step on that chain (section 3). With $s = t-1$ it is [chapter 06](06_sampling.py)'s `sample()`.
# - $\eta = 0$: no fresh noise at all; $x_T$ determines the sample. This is a discretisation of the
#   *probability-flow ODE* {cite:p}`song2021sde`, the deterministic process with the same marginals that
#   [chapter 03](03_theory.py) drew on a 2-D toy. That is the argument for large jumps: an ODE solver with large
#   steps is still a solver of the same equation, while a stochastic chain with large steps must remove at each
#   step, with one network call, the fresh noise it adds. Whether that costs anything at a given budget is a
#   question for measurement; section 8 answers it for this network (at 20 steps or more, not measurably).
#
# At the last step the chain reaches the clean end: $s = -1$ with $\bar\alpha_{-1} = 1$, where
# $\sigma = 0$ and $x_{-1} = \hat x_0$. This is `diffusers`' default `set_alpha_to_one=True` for
# `DDIMScheduler`. Optional clipping clamps $\hat x_0$ to $[-1, 1]$ and keeps the network's
# $\hat\varepsilon$ for the direction term, as `diffusers` does by default (`use_clipped_model_output=False`).
# Two of `DDIMScheduler`'s defaults differ from ours: it clips by default (`clip_sample=True`; our `clip=False`)
# and spaces timesteps `"leading"` (ours: `"trailing"`, for the reason of section 2).
#
# The argument checks, $\hat x_0$ and the loop come from [chapter 06](06_sampling.py) (`predict_x0`, `run_chain`): this chapter
# adds only what is new.

# %%
#| default_exp fast_sampling
#| export
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ddpm_lib.checks import check_choice, check_int, check_jump, check_sample, check_timesteps
from ddpm_lib.sampling import alpha_bar_at, predict_noise, predict_x0, run_chain
from ddpm_lib.schedule import NoiseSchedule

#: the timestep spacings of :func:`timesteps_for`
SPACINGS = ("leading", "trailing", "linspace")


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta!r}")
    return float(eta)


# %% [markdown]
# ## 2. Which timesteps? Leading, trailing and linspace spacing
#
# With $n$ network calls we visit $n$ of the $T = 1000$ training timesteps. Three rules are in use; we
# define them exactly as `diffusers`' `DDIMScheduler.set_timesteps` does ({cite:t}`lin2024flawed`, Table 2,
# names them):
#
# | spacing | timesteps (descending) | $n = 10$ |
# |---|---|---|
# | leading | $k\,\lfloor T/n \rfloor$, $k = 0..n-1$ | 900, 800, …, 100, 0 |
# | trailing | $\operatorname{round}(T - k\,T/n) - 1$, $k = 0..n-1$ | 999, 899, …, 199, 99 |
# | linspace | $\operatorname{round}$ of $n$ evenly spaced points in $[0, T-1]$ | 999, 888, …, 111, 0 |
#
# **Why leading never reaches $T-1$.** Its largest timestep is $(n-1)\lfloor T/n\rfloor \le T - T/n$: 900 for
# $n = 10$, 980 for $n = 50$. Sampling still starts from pure noise $x \sim \mathcal N(0, I)$, but tells the
# network it is looking at $x_{900}$, which in training always contained $\sqrt{\bar\alpha_{900}} \approx 0.016$
# of a digit. The first step is asked to denoise an image that does not exist in its training data, and the
# error carries through a short chain. {cite:t}`lin2024flawed` (§3.3) show the effect and recommend
# **trailing** spacing: its first timestep is always $T-1$, the one training paired with (almost) pure
# noise. (They also fix the schedule so that
# $\bar\alpha_{T-1} = 0$ exactly — a separate flaw: our linear schedule leaves $\bar\alpha_{999} \approx 4\times 10^{-5}$,
# small enough to ignore at 28×28.) Linspace also starts at $T-1$ but ends at $t = 0$, spending its last call on
# the nearly clean image; trailing ends at $T/n - 1$ and jumps from there to the clean end.
#
# Two quirks of `diffusers` we don't copy. Its trailing rule builds the list with
# `np.arange(T, 0, -T/n)`, which for some $n$ (61, 103, 121, …) returns $n+1$ entries ending in the invalid
# timestep $-1$; we keep the first $n$. And `DDIMScheduler.step` takes the previous
# timestep to be $t - \lfloor T/n\rfloor$, which is the *next entry of the list* only for leading spacing and
# for trailing when $n$ divides $T$; our samplers always jump to the next entry of the list they were given.


# %%
#| export
def timesteps_for(num_train_timesteps: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """``num_steps`` of the ``num_train_timesteps`` training timesteps, descending, as an int64 tensor.

    ``spacing`` as in diffusers' ``DDIMScheduler.set_timesteps`` (Lin et al., 2024, Table 2):

    - ``"leading"``: k·⌊T/n⌋ for k = n−1..0 (never reaches T−1; ends at 0);
    - ``"trailing"``: round(T − k·T/n) − 1 for k = 0..n−1 (starts at T−1; ends at T/n − 1);
    - ``"linspace"``: round(linspace(0, T−1, n)) reversed (starts at T−1; ends at 0).
    """
    T = check_int(num_train_timesteps, "num_train_timesteps", 1, 10**9)
    n = check_int(num_steps, "num_steps", 1, T)
    check_choice(spacing, "spacing", SPACINGS)
    if spacing == "leading":
        steps = (np.arange(n) * (T // n))[::-1]
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n))[:n] - 1  # diffusers' arange overshoots for some n
    else:
        steps = np.linspace(0, T - 1, n).round()[::-1]
    return torch.from_numpy(steps.astype(np.int64).copy())


# %%
spacing_steps = {spacing: timesteps_for(T, 10, spacing) for spacing in ("leading", "trailing", "linspace")}
fig, axes = plt.subplots(1, 2, figsize=(11, 2.6), gridspec_kw={"width_ratios": [2, 1]})
for row, (spacing, steps) in enumerate(spacing_steps.items()):
    axes[0].scatter(steps, [row] * len(steps), s=18, label=spacing)
    print(f"{spacing:>8}: {steps.tolist()}")
axes[0].set_yticks(range(3), list(spacing_steps))
axes[0].set_xlabel("timestep t (10 steps)")
axes[0].axvline(T - 1, color="grey", lw=0.8, ls=":")
n_range = np.arange(2, 101)
first = {
    s: [scheduler.alpha_bars[int(timesteps_for(T, int(n), s)[0])].sqrt().item() for n in n_range]
    for s in SPACINGS
}
for spacing, values in first.items():
    axes[1].plot(n_range, values, label=spacing)
axes[1].set_yscale("log")
axes[1].set_xlabel("number of steps n")
axes[1].set_ylabel(r"$\sqrt{\bar\alpha}$ at the first step")
axes[1].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "08_spacings")
plt.show()

# %%
leading, trailing, linspace = spacing_steps.values()
assert leading[0] == 900 and trailing[0] == linspace[0] == T - 1  # only leading misses t = T-1
assert leading[-1] == linspace[-1] == 0 and trailing[-1] == T // 10 - 1
assert all(len(s) == 10 and (s.diff() < 0).all() for s in spacing_steps.values())
# the signal the first step assumes: 0.0064 (pure noise, as sampled) for trailing, ~0.016 for leading at n = 10
print(
    f"sqrt(alpha_bar) at the first step, n = 10: leading {first['leading'][8]:.4f}, trailing {first['trailing'][8]:.4f}"
)
assert first["leading"][8] > 2.5 * first["trailing"][8]
assert max(first["trailing"]) == min(first["trailing"])  # trailing always starts at T - 1

# %% [markdown]
# ## 3. The DDIM step, and DDPM on a shorter chain
#
# `ddim_step` is the update of section 1 for a jump $t \to s$ (`t_prev`). It takes either the model, or its
# prediction $\hat\varepsilon$ as a tensor (useful for tests and for solvers that evaluate the model themselves).
# Noise is drawn exactly as [chapter 06](06_sampling.py) draws it, and only when $\sigma > 0$ — never at the final jump to the
# clean end — so a test can replay it against `diffusers` with an identically seeded generator.
#
# **DDPM on a sub-sequence.** [Chapter 06](06_sampling.py)'s `sample()` can't simply skip steps: its $\beta_t$ is the noise
# added by *one* step. A chain that visits only $t_1 > t_2 > \dots$ has its own per-jump quantities,
#
# $$ \alpha_{t\to s} = \frac{\bar\alpha_t}{\bar\alpha_s}, \qquad \beta_{t\to s} = 1 - \frac{\bar\alpha_t}{\bar\alpha_s}, $$
#
# and the posterior mean and variance of [chapter 06](06_sampling.py) with $\beta_t, \alpha_t, \bar\alpha_{t-1}$ replaced by
# $\beta_{t\to s}, \alpha_{t\to s}, \bar\alpha_s$ ("respacing", {cite:p}`nichol2021improved`; `diffusers`' `DDPMScheduler`
# does the same). Keeping the single-step $\beta_t$ while skipping steps is a classic bug: the chain removes
# far too little noise per jump. [Chapter 06](06_sampling.py) already wrote the step this way: its `reverse_step(scheduler, t,
# t_prev, ...)` takes the timestep it jumps to, and `sample_loop(model, scheduler, x_T, timesteps)` runs DDPM (or
# `sample_clip()`) on any descending list of timesteps. Without the clamp it is `ddim_step` with $\eta = 1$,
# written differently.


# %%
#| export
@torch.no_grad()
def ddim_step(
    scheduler: NoiseSchedule,
    t: int,
    t_prev: int,
    model: nn.Module | torch.Tensor,
    x_t: torch.Tensor,
    eta: float = 0.0,
    clip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""One DDIM jump from timestep ``t`` to ``t_prev`` < t (−1: the clean end, ᾱ = 1).

    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z,  σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s),
    with ε̂ = ``predict_noise(model, x_t, t, scheduler)`` (``model`` itself when it is a tensor of noise
    predictions) and x̂_0 clamped to [−1, 1] when ``clip`` (the direction term keeps ε̂, as diffusers does by
    default).
    z ~ N(0, I) is drawn with ``generator`` only when σ > 0.
    """
    t, t_prev = check_jump(scheduler.num_timesteps, t, t_prev)
    check_sample(x_t, "x_t")
    eta = _check_eta(eta)
    eps = predict_noise(model, x_t, t, scheduler)
    x0 = predict_x0(scheduler, t, eps, x_t, clip)
    alpha_bar, alpha_bar_prev = alpha_bar_at(scheduler, t), alpha_bar_at(scheduler, t_prev)
    sigma = eta * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
    x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        x_prev = x_prev + sigma * torch.randn(
            x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device
        )
    return x_prev


# %% [markdown]
# Three checks of the algebra, on the shipped model: with $\eta = 1$ and $s = t - 1$ the DDIM step is
# [chapter 06](06_sampling.py)'s `sample()` (same random numbers); [chapter 06](06_sampling.py)'s `reverse_step` on a long jump equals DDIM with
# $\eta = 1$ too; and with $\eta = 0$ the jump to the clean end returns $\hat x_0$ itself.

# %%
x_t = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(3))
for t in (999, 500, 1):
    ddim = ddim_step(scheduler, t, t - 1, model, x_t, eta=1.0, generator=torch.Generator().manual_seed(7))
    ddpm = sample(scheduler, t, model, x_t, generator=torch.Generator().manual_seed(7))
    print(f"t={t}: max |ddim_step(eta=1) - sample()| = {(ddim - ddpm).abs().max():.1e}")
    assert torch.allclose(ddim, ddpm, atol=1e-4)
jump_ddim = ddim_step(scheduler, 600, 400, model, x_t, eta=1.0, generator=torch.Generator().manual_seed(8))
jump_ddpm = reverse_step(scheduler, 600, 400, model, x_t, generator=torch.Generator().manual_seed(8))
assert torch.allclose(jump_ddim, jump_ddpm, atol=1e-4)
eps = predict_noise(model, x_t, 99, scheduler)
assert torch.allclose(ddim_step(scheduler, 99, -1, eps, x_t), predict_x0(scheduler, 99, eps, x_t), atol=1e-6)

# %% [markdown]
# ## 4. The sampling loops
#
# [Chapter 06](06_sampling.py)'s `run_chain` walks the chosen timesteps and jumps each time to the next one, and from the last one
# to the clean end. One generator supplies $x_T$ and every $z$, as in [chapter 06](06_sampling.py). With $n$ steps each sampler calls
# the network exactly $n$ times. DDPM on a respaced chain needs no new code: it is
# `sample_loop(model, scheduler, x_T, timesteps_for(T, n), clip=False, generator=generator)`. Every loop takes the
# same arguments — the network, the schedule, $x_T$, the timesteps, then `clip`, the generator and the hooks — so
# `ddpm_lib.generation` picks one by the sampler's name alone.


# %%
#| export
@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x_T: torch.Tensor,
    timesteps: Sequence[int] | None = None,
    *,
    clip: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM from ``x_T`` over ``timesteps`` (descending, e.g. :func:`timesteps_for`; all T by default): one network
    call per timestep.

    η = 0 (default) is deterministic; η = 1 is DDPM on the respaced chain. The arguments are those of chapter 06's
    ``sample_loop``, plus η; ``on_step(t, x_t)`` sees the image entering each step.
    """
    check_sample(x_T, "x_T")
    eta = _check_eta(eta)

    def step(t, t_prev, x):
        return ddim_step(scheduler, t, t_prev, model, x, eta, clip, generator)

    timesteps = check_timesteps(timesteps, scheduler.num_timesteps)
    return run_chain(
        model, timesteps, step, x_T, on_step=on_step, progress=progress, desc=f"DDIM (eta={eta:g})"
    )


# %% [markdown]
# ## 5. DPM-Solver++(2M)
#
# Deterministic DDIM is the simplest solver of the probability-flow ODE. DPM-Solver {cite:p}`lu2022dpmsolver`
# and DPM-Solver++ {cite:p}`lu2022dpmsolverpp` write that ODE in half the log signal-to-noise ratio,
# $\lambda_t = \log(\alpha_t/\sigma_t) = \tfrac12 \log \mathrm{SNR}_t$, with $\alpha_t = \sqrt{\bar\alpha_t}$ and $\sigma_t = \sqrt{1-\bar\alpha_t}$ (here
# $\alpha_t$ and $\sigma_t$ are the signal and noise *scales* of $x_t$, not [chapter 01](01_noise_schedule.py)'s $\alpha_t$ and [chapter 06](06_sampling.py)'s
# $\sigma_t$; the [notation](../notation.md) page lists both), and in terms of the *data prediction* $\hat x_0$.
# Its exact solution from $t$ to an earlier $s$ is
#
# $$ x_s = \frac{\sigma_s}{\sigma_t}\,x_t + \sigma_s \int_{\lambda_t}^{\lambda_s} e^{\lambda}\,\hat x_0(x_\lambda, \lambda)\,d\lambda . $$
#
# The linear part is solved exactly; only the integral of $\hat x_0$ is approximated. With $h = \lambda_s - \lambda_t$:
#
# - **first order** (hold $\hat x_0$ constant): $x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\,\hat x_0$
#   — exactly the DDIM step with $\eta = 0$ (exercise 8.2);
# - **second order, multistep (2M)**: reuse the previous step's prediction $\hat x_0^{\,\prime}$ at $\lambda_{t'}$ to
#   extrapolate linearly in $\lambda$, at no extra network call:
#
# $$ D = \hat x_0 + \frac{1}{2r}\left(\hat x_0 - \hat x_0^{\,\prime}\right),\quad r = \frac{\lambda_t - \lambda_{t'}}{h},
#    \qquad x_s = \frac{\sigma_s}{\sigma_t}\,x_t - \alpha_s (e^{-h} - 1)\,D . $$
#
# The first step has no previous prediction and uses first order. So does the last: its target is the clean
# end ($\sigma_s = 0$, $\lambda_s = \infty$), where the update reduces to $x_s = \hat x_0$. These are
# `DPMSolverMultistepScheduler`'s defaults (`algorithm_type="dpmsolver++"`, `solver_order=2`,
# `solver_type="midpoint"`, `lower_order_final=True`, `final_sigmas_type="zero"`). `clip=True` clamps each
# $\hat x_0$ to $[-1, 1]$, which is `diffusers`' `thresholding=True` with `sample_max_value=1.0`. One difference:
# its own `set_timesteps` spaces `"linspace"` and `"leading"` differently from DDIM's (it drops $t = 0$); we use
# `timesteps_for` for every sampler, and the tests hand `diffusers` the same timesteps.


# %%
#| export
def _alpha_sigma_lambda(scheduler: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t); (1, 0, ∞) at the clean end t = −1."""
    if t < 0:
        return 1.0, 0.0, math.inf
    alpha_bar = alpha_bar_at(scheduler, t)
    alpha, sigma = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def dpm_solver_pp_update(
    scheduler: NoiseSchedule,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    previous: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""One DPM-Solver++ step from ``t`` to ``t_prev`` given the data prediction ``x0`` = x̂_0(x_t, t).

    ``previous`` = (t', x̂_0 at t'), the prediction of the step before: second order (2M); ``None``: first
    order (= DDIM with η = 0). The jump to the clean end (t_prev = −1) is first order and returns ``x0``.
    """
    t, t_prev = check_jump(scheduler.num_timesteps, t, t_prev)
    if t_prev < 0:
        return x0
    _, sigma_t, lambda_t = _alpha_sigma_lambda(scheduler, t)
    alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(scheduler, t_prev)
    h = lambda_s - lambda_t
    d = x0
    if previous is not None:
        t_before, x0_before = previous
        r = (
            lambda_t - _alpha_sigma_lambda(scheduler, check_int(t_before, "previous t", t + 1, 10**9))[2]
        ) / h
        d = x0 + (0.5 / r) * (x0 - x0_before)
    return (sigma_s / sigma_t) * x_t - (alpha_s * math.expm1(-h)) * d


@torch.no_grad()
def dpm_solver_pp_sample(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x_T: torch.Tensor,
    timesteps: Sequence[int] | None = None,
    *,
    clip: bool = False,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M) from ``x_T`` over ``timesteps`` (descending; all T by default): deterministic, one network
    call per timestep. The arguments are those of every sampler loop (``generator`` is not needed: no noise)."""
    check_sample(x_T, "x_T")
    previous: list[tuple[int, torch.Tensor]] = []

    def step(t, t_prev, x):
        x0 = predict_x0(scheduler, t, predict_noise(model, x, t, scheduler), x, clip)
        x = dpm_solver_pp_update(scheduler, t, t_prev, x, x0, previous[-1] if previous else None)
        previous[:] = [(t, x0)]
        return x

    timesteps = check_timesteps(timesteps, scheduler.num_timesteps)
    return run_chain(model, timesteps, step, x_T, on_step=on_step, progress=progress, desc="DPM-Solver++(2M)")


# %% [markdown]
# The first-order update and deterministic DDIM agree, and the second-order correction is small where
# consecutive predictions agree:

# %%
eps = predict_noise(model, x_t, 500, scheduler)
x0_500 = predict_x0(scheduler, 500, eps, x_t)
first_order = dpm_solver_pp_update(scheduler, 500, 450, x_t, x0_500)
assert torch.allclose(first_order, ddim_step(scheduler, 500, 450, eps, x_t), atol=1e-5)
second_order = dpm_solver_pp_update(scheduler, 500, 450, x_t, x0_500, previous=(550, x0_500))
assert torch.allclose(first_order, second_order)  # equal predictions: nothing to extrapolate
print("first-order DPM-Solver++ == DDIM (eta = 0)")

# %% [markdown]
# ## 6. One entry point
#
# Every sampler of the course now has a name: `"ddpm"` and `"clip"` ([chapter 06](06_sampling.py)'s two steps, on all $T$
# timesteps or a respaced chain), `"ddim"` and `"dpmpp"`. A `SampleSpec` names one with its options — steps,
# $\eta$, spacing, clipping, and guidance and labels, which [chapter 10](10_guidance.py) adds — and `generate` draws samples
# from it: batch $i$ seeded with `seed + i` (so the same `seed` gives every sampler the same starting noise),
# the network on the fastest device and in the precision it computes fast in, results on the CPU in $[-1, 1]$. The command line, the training run's
# grids, [chapter 07](07_evaluation.py)'s metrics and this chapter's measurements all go through it. Its default step counts:

# %%
for name, steps in DEFAULT_STEPS.items():
    print(
        f"{name:>6}: {steps or T} network evaluations by default; e.g. {SampleSpec(sampler=name).describe(T)}"
    )
fast = generate(model, scheduler, 4, SampleSpec(sampler="ddim", steps=10))
assert fast.shape == (4, 1, 28, 28) and fast.abs().max() <= 1

# %% [markdown]
# ## 7. Side by side: 10, 20 and 50 steps
#
# The same starting noise for every panel. Rows: [chapter 06](06_sampling.py)'s `sample()` and `sample_clip()` on the respaced
# chain, DDIM ($\eta = 0$) and DPM-Solver++(2M); columns: 10, 20 and 50 network calls. All with trailing spacing.

# %%
grid_steps = (10, 20, 50)
methods = {
    "DDPM sample()": "ddpm",
    "sample_clip()": "clip",
    "DDIM": "ddim",
    "DPM-Solver++(2M)": "dpmpp",
}
n_grid = PROFILE.grid_samples
grids = {
    (label, steps): generate(model, scheduler, n_grid, sampler=method, steps=steps, seed=0)
    for label, method in methods.items()
    for steps in grid_steps
}
fig, axes = plt.subplots(len(methods), len(grid_steps), figsize=(2.4 * len(grid_steps), 2.4 * len(methods)))
for row, label in enumerate(methods):
    for column, steps in enumerate(grid_steps):
        axes[row, column].imshow(np.asarray(grid_image(grids[label, steps])), cmap="gray", vmin=0, vmax=255)
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
        axes[0, column].set_title(f"{steps} NFE", fontsize=9)
    axes[row, 0].set_ylabel(label, fontsize=8)
fig.tight_layout()
save_figure(fig, "08_samplers_by_steps")
plt.show()


# %% [markdown]
# Two ODE solvers started from the same noise should approach the same digits as their steps shrink. The
# distances below (mean absolute pixel difference to each sampler's own 50-step result) say how far a
# short run is from that limit, and how close DDIM and DPM-Solver++ come to each other at 50 steps. Notice
# also what the pictures show: the two deterministic rows draw the *same* digits at 10, 20 and 50 steps (the
# starting noise decides the digit), while the stochastic rows draw new ones at every step count (each chain
# adds fresh noise as it goes); and the deterministic strokes are thinner and more ragged. Section 8 measures
# both samplers and explains the difference.


# %%
def distance(a, b):
    return (a - b).abs().mean().item()


to_50 = {
    (label, steps): distance(grids[label, steps], grids[label, 50])
    for label in ("DDIM", "DPM-Solver++(2M)")
    for steps in (10, 20)
}
between = distance(grids["DDIM", 50], grids["DPM-Solver++(2M)", 50])
for (label, steps), value in to_50.items():
    print(f"{label:>18}, {steps} steps: mean |x - x_50 steps| = {value:.3f}")
print(f"DDIM vs DPM-Solver++ at 50 steps: {between:.3f}")
assert to_50["DPM-Solver++(2M)", 10] < to_50["DDIM", 10]  # second order: closer to its limit at 10 steps
assert between < to_50["DDIM", 10]  # the two solvers approach the same ODE solution
for images in grids.values():
    assert images.shape == (n_grid, 1, 28, 28) and images.abs().max() <= 1

# %% [markdown]
# ## 8. Quality against the number of network evaluations
#
# Now the question that matters: how many network calls does each sampler need to be as good as 1000-step
# DDPM? For every sampler and every NFE budget we draw the same number of samples (same seeds) and measure
# the Fréchet distance of [chapter 07](07_evaluation.py) against the held-out digits, next to the real-vs-real **floor** at the
# same $n$ — what real digits score, a reference point rather than a bound ([chapter 07](07_evaluation.py), section 6: it has its own
# spread, and a sampler can score below it). The table also reports [chapter 07](07_evaluation.py)'s disjoint draws: each row's
# samples split into a few equal parts, scored separately, with the standard error of their mean. The
# 1000-NFE points of DDPM and `sample_clip()` are [chapter 06](06_sampling.py)'s samplers on the full chain; fewer NFE run them
# on a respaced chain. All of them are drawn by `generate`, in the precision this machine computes fast in.
#
# Cost: 1 to 1.5 ms per image per network call on two CPU cores (the cell prints it), so at full size (256
# samples per point, every budget, plus a few extra rows) the next cell samples for 35 to 40 minutes on a 2-core
# CPU with bfloat16 instructions: one progress bar counts the network evaluations of the finished rows, another follows each chain of the
# four curves. Besides the four curves, the table has two extra experiments: the three spacings at 10 steps, and DDIM
# at 20 steps with $\eta$ between 0 and 1.

# %%
n_nfe, nfe_budgets = PROFILE.nfe_samples, list(PROFILE.nfe_steps)
heldout_images = load_mnist("heldout", verbose=False).tensors[0]
samples, seconds = {}, {}
total_nfe = len(methods) * sum(nfe_budgets) + 4 * 10 + 3 * 20  # every row below, in network calls per sample
rows = tqdm(total=total_nfe, desc="rows", unit="NFE", disable=not PROFILE.progress)
for label, method in methods.items():
    for nfe in nfe_budgets:
        start = time.perf_counter()
        images = generate(
            model, scheduler, n_nfe, sampler=method, steps=nfe, seed=1, progress=PROFILE.progress
        )
        samples[f"{label} @ {nfe}"] = images
        seconds[label, nfe] = time.perf_counter() - start
        rows.update(nfe)
# the spacing question of section 2, at 10 steps (the rows above use trailing spacing)
for label, method in (("DDPM sample()", "ddpm"), ("DDIM", "ddim")):
    for spacing in ("leading", "linspace"):
        samples[f"{label} {spacing} @ 10"] = generate(
            model, scheduler, n_nfe, sampler=method, steps=10, spacing=spacing, seed=1
        )
        rows.update(10)
# between deterministic DDIM (eta = 0) and DDPM on the respaced chain (eta = 1), at 20 steps
for eta in (0.25, 0.5, 0.75):
    samples[f"DDIM eta={eta} @ 20"] = generate(
        model, scheduler, n_nfe, sampler="ddim", steps=20, eta=eta, seed=1
    )
    rows.update(20)
rows.close()
samples["real digits (floor)"] = baseline_images(n_nfe, seed=1)["real digits (floor)"]
results = evaluate_images(classifier, samples, heldout_images, PROFILE.eval_draws)
print(f"{n_nfe} samples per row; reference: {len(heldout_images)} held-out digits")
print(format_table(results))
total = sum(seconds.values())
print(
    f"sampling took {total:.0f} s: {1000 * total / (n_nfe * len(methods) * sum(nfe_budgets)):.2f} ms per image per NFE"
)

# %% [markdown]
# The same Fréchet distances, one row per sampler and one column per budget:

# %%
fd = {name: r["frechet_distance"] for name, r in results.items()}
print(f"Fréchet distance, {n_nfe} samples per point (floor: {fd['real digits (floor)']:.1f})")
print(f"{'NFE':>18} " + "".join(f"{nfe:>8}" for nfe in nfe_budgets))
for label in methods:
    print(f"{label:>18} " + "".join(f"{fd[f'{label} @ {nfe}']:8.1f}" for nfe in nfe_budgets))
assert all(np.isfinite(v) and v >= 0 for v in fd.values())
assert len(fd) == len(methods) * len(nfe_budgets) + 8

# %% [markdown]
# **How far apart must two rows be?** A Fréchet distance measured on $n$ samples is itself random: another
# draw of $n$ gives another number. The floor shows by how much, with no sampler involved: score disjoint
# draws of $n$ real training digits against the same held-out digits (the floor above is the first of them).

# %%
train_images = load_mnist("train", verbose=False).tensors[0]
order = torch.randperm(
    len(train_images), generator=torch.Generator().manual_seed(1)
)  # baseline_images' order
n_draws = min(len(train_images) // n_nfe, 20)
draw_features, _ = classify(classifier, train_images[order[: n_draws * n_nfe]])
heldout_features, _ = classify(classifier, heldout_images)
floor_draws = np.array(
    [features_distance(draw_features[i * n_nfe : (i + 1) * n_nfe], heldout_features) for i in range(n_draws)]
)
draw_spread = floor_draws.std(ddof=1)
print(
    f"{n_draws} disjoint draws of {n_nfe} real digits: Fréchet distance {floor_draws.mean():.1f} on average, "
    f"standard deviation {draw_spread:.1f}, from {floor_draws.min():.1f} to {floor_draws.max():.1f}"
)
print(f"two rows differ by about {np.sqrt(2) * draw_spread:.1f} (one standard deviation) from chance alone")
assert np.isclose(floor_draws[0], fd["real digits (floor)"], rtol=1e-3)  # the floor row is the first draw

# %%
floor = results["real digits (floor)"]
fig, ax = plt.subplots(figsize=(7, 4.2))
for label in methods:
    values = np.array([fd[f"{label} @ {nfe}"] for nfe in nfe_budgets])
    ax.errorbar(nfe_budgets, values, yerr=draw_spread, marker="o", capsize=3, label=label)
ax.axhline(floor["frechet_distance"], color="black", ls="--", lw=1, label="real vs real (floor)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xticks(nfe_budgets, [str(n) for n in nfe_budgets])
ax.set_xlabel("network evaluations per sample (NFE)")
ax.set_ylabel("Fréchet distance to held-out digits")
ax.set_title(f"{n_nfe} samples per point; bars: ± 1 s.d. between draws of {n_nfe} real digits", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "08_nfe_quality")
plt.show()

# %% [markdown]
# The target of this chapter: at 20 network evaluations, is one of the fast samplers within 25% of
# 1000-step DDPM's distance? (It needs the 1000-step runs, which only the full-size profile makes.)

# %%
twenty = [name for name in fd if name.endswith(" @ 20")]
best_20 = min(twenty, key=fd.get)  # the best of every sampler run with 20 network calls
if T in nfe_budgets:
    reference = fd[f"DDPM sample() @ {T}"]
    ratio = fd[best_20] / reference
    print(f"1000-step DDPM: {reference:.3f}; best at 20 NFE: {best_20}: {fd[best_20]:.3f} = {ratio:.2f}x")
    print(f"within 25%: {ratio <= 1.25}; floor {fd['real digits (floor)']:.3f}")
    if n_nfe >= 64:  # with a handful of samples the distances are noise: claim only what enough samples show
        assert ratio <= 1.25
else:
    print(f"not measured in the {PROFILE.name} profile (no 1000-step runs); best at 20 NFE: {best_20}")
if n_nfe >= 64:  # what the text below reads off the table, checked where the samples are enough to show it
    assert fd["DPM-Solver++(2M) @ 10"] < fd["DDIM @ 10"]  # second order: nearer its plateau at 10 steps
    assert abs(fd["DPM-Solver++(2M) @ 20"] / fd[f"DPM-Solver++(2M) @ {T}"] - 1) < 0.1  # converged by 20
    if T in nfe_budgets:  # does fresh noise still help at 1000 steps? (section 8 discusses it)
        gap = fd[f"DPM-Solver++(2M) @ {T}"] - fd[f"DDPM sample() @ {T}"]
        print(f"1000-step DPM-Solver++(2M) minus 1000-step DDPM: {gap:+.1f}")

# %% [markdown]
# **Reading the plot.** The numbers below are the ones the cells above print in the full profile, on the shipped
# `ddpm_mnist` weights (36,000 training steps, predicting $v$, self-attention at 7×7), 256 samples per point
# (the full profile: 35 to 40 minutes on 2 cores, bfloat16 autocast; bfloat16 rounding depends on the CPU and its
# thread count, so another machine moves them by a point or two).
# The floor is 68.9. How much one number can move by chance, the cell on the draws of real digits says: at
# 256 digits the distance of 17 disjoint draws has a standard deviation of 9.5 (from 55.2 to 86.9), so two
# rows differ by about 13 from chance alone, and a difference below about 25 is not shown to be real.
#
# - **The target is met.** At 20 network evaluations DDPM on a respaced chain scores 70.9, 0.97× the 1000-step
#   DDPM's 72.9 (`sample_clip()`: 71.0), and DPM-Solver++ 79.5, 1.09×. Every difference is within what chance
#   gives: at 20 network calls these samplers are not measurably worse than 1000-step DDPM. All of them draw all
#   ten digits at every budget, and 87–94% of every row's samples are classified with confidence ≥ 0.9.
# - **The deterministic solvers converge, and fast.** DPM-Solver++ is at its plateau (78–80) from 20 steps on;
#   DDIM, first order, starts 15 higher at 10 steps (99.4 against 84.7) and gets there by 50 to 100. Both then
#   follow the same ODE to the same end: at 50 steps their samples differ by about 0.01 per pixel (section 7
#   prints it).
# - **The stochastic samplers zig-zag.** Their row (99.5, 70.9, 84.8, 72.1, 88.6, 72.9) moves by about as
#   much as chance allows: every budget draws different fresh noise. Read it as "about 80, a little lower with
#   more steps", not as a curve. The solvers' plateau sits about 7 above DDPM at 1000 steps (the cell prints
#   +6.6): less than one standard deviation of a difference, so on these weights the two families are not
#   shown to differ at all.
# - **$\eta$ and spacing.** DDIM at 20 steps with $\eta$ = 0, 0.25, 0.5, 0.75, 1 scores 86.0, 88.0, 81.7,
#   94.2, 70.9 ($\eta = 1$ is DDPM's row); no step between neighbours is larger than chance. At 10 steps, leading
#   spacing gives 75.5 for DDPM and 100.9 for DDIM, against 99.5 and 99.4 (trailing) and 91.4 and 103.4
#   (linspace). For DDIM the spacings are indistinguishable; for DDPM leading is 24 lower than trailing, about
#   1.8 standard deviations of a difference — one draw of 256 samples, among the eight comparisons this
#   paragraph makes, does not settle it. Trailing stays the default because it is the choice that is right in
#   principle: its first step sees the noise level it is given.
#
# ### The first step, and what the prediction target does to it
#
# Both families use the same network; they differ in what they do with its errors, and a noise predictor's
# largest error in $\hat x_0$ is at the first step. At $t = T-1$ the ideal $\hat x_0$ is close to the average
# digit. A network that predicts $\varepsilon$ gets $\hat x_0$ by dividing its residual by
# $\sqrt{\bar\alpha_{T-1}} \approx 0.0064$: predicting the noise to within a percent — a fine regression
# result — still leaves an error of about one unit in every pixel of $\hat x_0$. The shipped network predicts $v$,
# and at $t = T-1$ its $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v \approx -\hat v$: it
# outputs its estimate of the digit itself, with nothing to divide ([chapter 02](02_forward_process.py), section 6; [chapter 05](05_training.py), section 8).
# The cell compares the two on the same starting noises, with the class-conditional `ddpm_mnist_cond` (an
# $\varepsilon$ network) told "no label" ([chapter 10](10_guidance.py)) as the $\varepsilon$ network:

# %%
x_T = torch.randn((n_grid, 1, 28, 28), generator=torch.Generator().manual_seed(0))
x0_first = predict_x0(scheduler, T - 1, predict_noise(model, x_T, T - 1, scheduler), x_T)
eps_model, eps_scheduler, _ = load_pretrained("ddpm_mnist_cond")
eps_model.requires_grad_(False)
eps_unlabelled = Conditioned(eps_model, torch.full((n_grid,), -1))  # label -1: no label
x0_first_eps = predict_x0(eps_scheduler, T - 1, predict_noise(eps_unlabelled, x_T, T - 1, eps_scheduler), x_T)
mean_digit = heldout_images.mean(0)
print(f"x0_hat at t = T-1, pixel std: the shipped network (predicts {prediction_of(model)}) {x0_first.std():.2f}; "
      f"ddpm_mnist_cond without a label (predicts {prediction_of(eps_model)}) {x0_first_eps.std():.2f}; "
      f"the average held-out digit {mean_digit.std():.2f}")  # fmt: skip
print(
    f"the eps network's implied error of the noise prediction (std): "
    f"{x0_first_eps.std() * eps_scheduler.alpha_bars[-1].sqrt():.3f}"
)
assert x0_first_eps.std() > 2 * mean_digit.std()  # far from the ideal guess, the average digit
assert x0_first.std() < x0_first_eps.std() / 2  # no division by sqrt(alpha_bar): near the average digit

# %% [markdown]
# A stochastic sampler replaces part of $x_t$ with fresh noise at every step, so an early error is diluted and
# later steps, where the network is accurate, can correct it. The deterministic solvers follow the learned ODE
# *exactly*: the trajectory from $x_T$ is fixed by the network's field, errors included, and more steps only
# make the solver follow it more faithfully — which is why DDIM and DPM-Solver++ level off at the same
# distance, and DPM-Solver++ (second order) gets there in fewer steps. {cite:t}`karras2022edm` (§4) make the same
# observation: stochastic sampling helps most when the network is imperfect, and the better the network, the
# less it helps. An $\varepsilon$ network is least accurate in $\hat x_0$ exactly at the first steps, as the cell above
# shows; a $v$ network removes that error at its source. That is why, on the shipped $v$ weights, the solvers'
# plateau is within chance of 1000-step DDPM. In practice: DPM-Solver++ at 10–20 steps when speed matters; DDPM at
# 1000 steps when the last bit of quality does and the time is there.
#
# ## 9. From the command line
#
# ```bash
# python -m ddpm_lib sample --sampler ddim --steps 50 --out ddim.png            # deterministic DDIM
# python -m ddpm_lib sample --sampler ddim --steps 50 --eta 1 --out ddim_eta1.png
# python -m ddpm_lib sample --sampler dpmpp --steps 20 --out dpmpp.png
# python -m ddpm_lib evaluate --sampler dpmpp --steps 20 --n 500                   # chapter 07's metrics
# ```
#
# `--sampler ddpm` / `clip` without `--steps` run [chapter 06](06_sampling.py)'s 1000-step samplers; with `--steps` they run on
# a respaced chain.
#
# ## Summary
#
# - The network only learned the marginals $q(x_t \mid x_0)$, so any reverse process with those marginals can
#   use it. DDIM writes $x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1-\bar\alpha_s-\sigma^2}\,\hat\varepsilon + \sigma z$;
#   $\eta = 1$ is DDPM on the shorter chain, $\eta = 0$ a deterministic ODE solver.
# - Spacing matters in principle: leading spacing never visits $t = T-1$, so its first step sees pure noise
#   labelled as a slightly noisy digit; trailing (and linspace) start at $T-1$. How much it matters depends on
#   where the network is accurate: on the shipped weights at 10 steps, nothing measurable for DDIM, and for DDPM
#   a difference that one draw of 256 samples cannot settle.
# - Skipping steps in DDPM needs the per-jump $\beta_{t\to s} = 1 - \bar\alpha_t/\bar\alpha_s$, not the single-step $\beta_t$.
# - DPM-Solver++(2M) solves the same ODE in $\lambda = \log(\alpha/\sigma)$, exactly in its linear part and to
#   second order in $\hat x_0$, reusing the previous prediction: same cost per step as DDIM, closer to the
#   ODE's solution at 10–20 steps.
# - A Fréchet distance on $n$ samples is random too: at $n = 256$ disjoint draws of real digits differ by a
#   standard deviation of about 10. Compare rows only with that in mind.
# - On the shipped weights, at 20 network evaluations DDPM on a respaced chain scores 0.97× 1000-step DDPM's
#   Fréchet distance and DPM-Solver++(2M) 1.09× (the target was 25%), both within the noise of one draw. The
#   deterministic solvers converge in 20–100 steps. An ODE solver keeps the network's early errors that a
#   stochastic sampler washes out; a $v$ network makes few, so here the two families are not shown to differ.
# - All of it matches `diffusers`' `DDIMScheduler`, `DDPMScheduler` and `DPMSolverMultistepScheduler` to
#   $10^{-4}$ on the same timesteps (`tests/test_fast_sampling.py`).
#
# ## Exercises
#
# :::{exercise} 8.1 · ★☆☆ · Leading spacing by hand
# :nonumber:
#
# Write `leading_steps(T, n)` returning the leading timesteps as a plain Python list, largest first,
# without `timesteps_for` or numpy. What is the largest timestep for $T = 1000$ and $n = 3$, how much of a digit
# does the network expect there ($\sqrt{\bar\alpha}$), and how does that compare with the pure noise the chain
# starts from?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def leading_steps(T: int, n: int) -> list[int]:
    ### BEGIN SOLUTION
    return [k * (T // n) for k in range(n - 1, -1, -1)]
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 8.1
for n in (1, 3, 10, 50, 64, 1000):
    assert leading_steps(1000, n) == timesteps_for(1000, n, "leading").tolist(), n
print(
    f"n = 3: largest timestep {leading_steps(1000, 3)[0]}, sqrt(alpha_bar) = {scheduler.alpha_bars[666].sqrt():.3f}"
)
### BEGIN HIDDEN TESTS
assert leading_steps(7, 2) == [3, 0]
### END HIDDEN TESTS
print("Exercise 8.1 passed")

# %% [markdown]
# **Your answer (8.1, 1 point, graded by hand).** What is the largest timestep for n = 3, how much of a digit does the network expect there, and how does that compare with the noise the chain starts from?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# for n = 3 the steps are 666, 333, 0. At t = 666 the network expects
# sqrt(alpha_bar_666) ≈ 0.105 of a digit (the check prints it), sixteen times the 0.0064 that is left at
# t = 999 — the noise the chain starts from. The fewer the steps, the larger that mismatch.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: steps 666, 333, 0; √ᾱ₆₆₆ ≈ 0.105 of a digit against 0.0064 at t = 999, about sixteen times more: the mismatch grows as the steps get fewer.
# - **½ point**: the steps right and one of the two amplitudes or the comparison missing.
# - **0**: wrong steps.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 8.2 · ★★☆ · First-order DPM-Solver++ is DDIM
# :nonumber:
#
# Write `dpm_solver_1(scheduler, t, s, x_t, x0_hat)`: the first-order update
# $x_s = \frac{\sigma_s}{\sigma_t} x_t - \alpha_s (e^{-h} - 1)\,\hat x_0$ with $h = \lambda_s - \lambda_t$, from the
# schedule's `alpha_bars` (not from `dpm_solver_pp_update`). Then show on paper that it equals the DDIM step with
# $\eta = 0$. Hint: $e^{-h} = \frac{\sigma_s\,\alpha_t}{\alpha_s\,\sigma_t}$.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def dpm_solver_1(scheduler, t: int, s: int, x_t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    alpha_t, sigma_t = scheduler.alpha_bars[t].sqrt(), (1 - scheduler.alpha_bars[t]).sqrt()
    alpha_s, sigma_s = scheduler.alpha_bars[s].sqrt(), (1 - scheduler.alpha_bars[s]).sqrt()
    h = torch.log(alpha_s / sigma_s) - torch.log(alpha_t / sigma_t)
    return sigma_s / sigma_t * x_t - alpha_s * (torch.exp(-h) - 1) * x0_hat
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 8.2
x_t = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(5))
for t, s in ((999, 899), (500, 480), (40, 0)):
    eps = predict_noise(model, x_t, t, scheduler)
    x0_hat = predict_x0(scheduler, t, eps, x_t)
    assert torch.allclose(
        dpm_solver_1(scheduler, t, s, x_t, x0_hat), ddim_step(scheduler, t, s, eps, x_t), atol=1e-4
    )
### BEGIN HIDDEN TESTS
assert torch.allclose(
    dpm_solver_1(scheduler, 300, 100, x_t, x_t),
    dpm_solver_pp_update(scheduler, 300, 100, x_t, x_t),
    atol=1e-5,
)
### END HIDDEN TESTS
print("Exercise 8.2 passed")

# %% [markdown]
# **Your answer (8.2, 1 point, graded by hand).** Show on paper that the first-order update equals the DDIM step with η = 0.
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# On paper. With e^{-h} = σ_s α_t / (α_s σ_t):
# x_s = (σ_s/σ_t) x_t − α_s (σ_s α_t / (α_s σ_t) − 1) x̂0 = α_s x̂0 + (σ_s/σ_t) (x_t − α_t x̂0).
# By the definition of x̂0, x_t − α_t x̂0 = σ_t ε̂, so x_s = α_s x̂0 + σ_s ε̂ = √ᾱ_s x̂0 + √(1 − ᾱ_s) ε̂:
# DDIM's update with σ = 0 (η = 0). Holding x̂0 constant over the step is all that DDIM assumes.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: substitutes e^(−h) = σ_s α_t/(α_s σ_t), rearranges to α_s x̂₀ + (σ_s/σ_t)(x_t − α_t x̂₀), and uses x_t − α_t x̂₀ = σ_t ε̂ to reach √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂.
# - **½ point**: the substitution right with one algebraic step missing or asserted.
# - **0**: a numerical comparison only.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 8.3 · ★★☆ · Walking between two noises
# :nonumber:
#
# Deterministic DDIM turns each $x_T$ into one digit, so a path between two noise images becomes a path between
# two digits. A straight line between two Gaussian samples passes through images of too small a norm (the
# midpoint of two independent $\mathcal N(0, I)$ draws has variance $\tfrac12$), which the network never saw
# at $t = T-1$. Write `slerp(a, b, w)`, the spherical interpolation per image,
#
# $$ \operatorname{slerp}(a, b, w) = \frac{\sin((1-w)\,\theta)}{\sin\theta}\,a + \frac{\sin(w\,\theta)}{\sin\theta}\,b,
#    \qquad \cos\theta = \frac{\langle a, b\rangle}{\lVert a\rVert\,\lVert b\rVert}, $$
#
# for batches `a`, `b` of shape (B, 1, 28, 28) and a float `w` in $[0, 1]$. Then decode
# `torch.stack([slerp(a, b, w)[0] for w in torch.linspace(0, 1, 8)])` with `ddim_sample` (10 steps) and look: how
# does the digit change along the path?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    cos = (a_flat * b_flat).sum(1) / (a_flat.norm(dim=1) * b_flat.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1)).reshape(-1, *([1] * (a.dim() - 1)))
    return (torch.sin((1 - w) * theta) * a + torch.sin(w * theta) * b) / torch.sin(theta)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 8.3
generator = torch.Generator().manual_seed(6)
a, b = torch.randn((3, 1, 28, 28), generator=generator), torch.randn((3, 1, 28, 28), generator=generator)
assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
middle = slerp(a, b, 0.5)
assert ((middle.flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)) - 1).abs().max() < 0.1  # norm kept
straight = ((a + b) / 2).flatten(1).norm(dim=1)
assert straight.mean() < 0.8 * a.flatten(1).norm(dim=1).mean()  # the straight line's isn't
### BEGIN HIDDEN TESTS
assert torch.allclose(slerp(a, b, 0.25).flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=0.1)
### END HIDDEN TESTS
print("Exercise 8.3 passed")
# The path the exercise asks about: three pairs of noise images, 8 points each, decoded by 10-step DDIM
paths = torch.cat([torch.stack([slerp(a[i : i + 1], b[i : i + 1], w)[0] for w in torch.linspace(0, 1, 8)])
                   for i in range(3)])  # fmt: skip
with torch.no_grad():
    decoded = ddim_sample(model, scheduler, paths, timesteps_for(scheduler.num_timesteps, 10))
fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
for ax, image in zip(axes.flat, decoded, strict=True):
    ax.imshow(image[0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
    ax.axis("off")
fig.suptitle(
    "slerp from a to b (left to right), three pairs of noise images, decoded by 10-step DDIM", fontsize=9
)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Your answer (8.3, 1 point, graded by hand).** How does the digit change along the path?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# (The check draws three such paths.) each decoded path starts at a's digit and ends at b's; on
# the way the strokes bend and thicken gradually, and where the two digits differ in class the picture
# switches from one to the other within a frame or two, through an ambiguous shape. Every frame is a
# digit-like image because every slerp point has the norm of a noise image, where the starting noise of
# the chain actually lies; a straight line's midpoints do not (the check measures their norm).
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: it starts at a's digit and ends at b's, strokes bending and thickening gradually, switching class within a frame or two through an ambiguous shape; every frame is digit-like because slerp keeps the norm of a noise image, unlike a straight line's midpoints.
# - **½ point**: describes the gradual change without the reason slerp works, or the reverse.
# - **0**: no description of the decoded path.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 8.4 · ★★★ · A stochastic second-order sampler
# :nonumber:
#
# Section 8 could not tell the stochastic samplers from the ODE solvers on this network, but found the second-order
# solver better than the first-order one at 10 steps. Does fresh noise help a second-order solver? Combine the two. The stochastic (SDE) variant of
# DPM-Solver++ {cite:p}`lu2022dpmsolverpp` (`diffusers`' `algorithm_type="sde-dpmsolver++"`) keeps section 5's
# $D$ and changes the update to
#
# $$ x_s = \frac{\sigma_s}{\sigma_t}\,e^{-h}\,x_t + \alpha_s\left(1 - e^{-2h}\right) D + \sigma_s\sqrt{1 - e^{-2h}}\;z,
#    \qquad z \sim \mathcal N(0, I), $$
#
# with $D = \hat x_0$ on the first step, and $x_s = \hat x_0$ on the jump to the clean end ($s = -1$), as in section 5.
#
# 1. Write `sde_dpmpp_update(scheduler, t, s, x_t, x0, previous, generator)`, with `previous` as in
#    `dpm_solver_pp_update` (a pair $(t', \hat x_0')$, or `None`), drawing $z$ as
#    `torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)`, and only when $s \ge 0$.
# 2. Show on paper that with $D = \hat x_0$ it is DDPM's step on the respaced chain: `ddim_step` with $\eta = 1$,
#    random numbers included.
# 3. Write `sde_dpmpp_sample(model, scheduler, x_T, num_steps, generator)`: trailing spacing, `num_steps` network
#    calls ([chapter 06](06_sampling.py)'s `run_chain` walks the chain for you).
# 4. Measure it as section 8 does, with `PROFILE.nfe_samples` samples at 10 and 20 network calls, and compare with
#    the table. Does it beat a row — by more than chance?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def sde_dpmpp_update(scheduler, t: int, s: int, x_t, x0, previous=None, generator=None) -> torch.Tensor:
    ### BEGIN SOLUTION
    if s < 0:
        return x0
    _, sigma_t, lambda_t = _alpha_sigma_lambda(scheduler, t)
    alpha_s, sigma_s, lambda_s = _alpha_sigma_lambda(scheduler, s)
    h = lambda_s - lambda_t
    d = x0
    if previous is not None:
        t_before, x0_before = previous
        r = (lambda_t - _alpha_sigma_lambda(scheduler, t_before)[2]) / h
        d = x0 + (0.5 / r) * (x0 - x0_before)
    z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
    return (
        (sigma_s / sigma_t) * math.exp(-h) * x_t
        - alpha_s * math.expm1(-2 * h) * d
        + sigma_s * math.sqrt(-math.expm1(-2 * h)) * z
    )
    ### END SOLUTION


@torch.no_grad()
def sde_dpmpp_sample(model, scheduler, x_T: torch.Tensor, num_steps: int, generator=None) -> torch.Tensor:
    ### BEGIN SOLUTION
    previous = []

    def step(t, t_prev, x):
        x0 = predict_x0(scheduler, t, predict_noise(model, x, t, scheduler), x)
        x = sde_dpmpp_update(scheduler, t, t_prev, x, x0, previous[-1] if previous else None, generator)
        previous[:] = [(t, x0)]
        return x

    return run_chain(model, timesteps_for(scheduler.num_timesteps, num_steps).tolist(), step, x_T)
    ### END SOLUTION


### BEGIN SOLUTION
# 4. The measurement: section 8's held-out digits and metrics, 10 and 20 network calls.
sde_samples = {}
for nfe in (10, 20):
    generator = torch.Generator().manual_seed(1)
    x_T = torch.randn((n_nfe, 1, 28, 28), generator=generator)
    sde_samples[nfe] = sde_dpmpp_sample(model, scheduler, x_T, nfe, generator).clamp(-1, 1)
sde_results = evaluate_images(classifier, sde_samples, heldout_images, PROFILE.eval_draws)
for nfe, result in sde_results.items():
    rivals = ", ".join(f"{label} {fd[f'{label} @ {nfe}']:.1f}" for label in methods)
    print(
        f"SDE-DPM-Solver++(2M) @ {nfe}: Fréchet distance {result['frechet_distance']:.1f} (table: {rivals})"
    )
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 8.4
x_t = torch.randn((3, 1, 28, 28), generator=torch.Generator().manual_seed(11))
eps = predict_noise(model, x_t, 500, scheduler)
x0_hat = predict_x0(scheduler, 500, eps, x_t)
first = sde_dpmpp_update(scheduler, 500, 450, x_t, x0_hat, None, torch.Generator().manual_seed(12))
ddpm_jump = ddim_step(scheduler, 500, 450, eps, x_t, eta=1.0, generator=torch.Generator().manual_seed(12))
assert torch.allclose(first, ddpm_jump, atol=1e-4)  # first order is DDPM on the respaced chain
assert torch.equal(sde_dpmpp_update(scheduler, 99, -1, x_t, x0_hat, (199, x_t)), x0_hat)  # the clean end


class Counted(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0  # `model`: so that prediction_of sees what the network predicts

    def forward(self, x, t):
        self.calls += 1
        return self.model(x, t)


counted = Counted(model)
out = sde_dpmpp_sample(counted, scheduler, x_t, 7, torch.Generator().manual_seed(13))
assert counted.calls == 7 and out.shape == x_t.shape and torch.isfinite(out).all()
### BEGIN HIDDEN TESTS
# the second-order step against the formula, with a previous prediction that differs
x0_before = predict_x0(scheduler, 600, predict_noise(model, x_t, 600, scheduler), x_t)
second = sde_dpmpp_update(
    scheduler, 500, 450, x_t, x0_hat, (600, x0_before), torch.Generator().manual_seed(12)
)
(_, sigma_t, lambda_t), (alpha_s, sigma_s, lambda_s) = (_alpha_sigma_lambda(scheduler, k) for k in (500, 450))
h, r = lambda_s - lambda_t, (lambda_t - _alpha_sigma_lambda(scheduler, 600)[2]) / (lambda_s - lambda_t)
z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(12))
d = x0_hat + (x0_hat - x0_before) / (2 * r)
expected = sigma_s / sigma_t * math.exp(-h) * x_t + alpha_s * (1 - math.exp(-2 * h)) * d
expected = expected + sigma_s * math.sqrt(1 - math.exp(-2 * h)) * z
assert torch.allclose(second, expected, atol=1e-4)
### END HIDDEN TESTS
print("Exercise 8.4 passed")

# %% [markdown]
# **Your answer (8.4, 1 point, graded by hand).** Part 2: show on paper that with D = x̂₀ the step is DDPM's step on the
# respaced chain. Part 4: does the sampler beat a row of the table, by more than chance?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# **Part 2.** With D = x̂0 and e^{-2h} = σ_s² ᾱ_t / (σ_t² ᾱ_s): the coefficient of x̂0 is
# α_s (1 − e^{-2h}) = √ᾱ_s β_{t→s} / (1 − ᾱ_t), and that of x_t is (σ_s/σ_t) e^{-h} = √(ᾱ_t/ᾱ_s) (1 − ᾱ_s)/(1 − ᾱ_t):
# the two coefficients of the posterior mean of the jump t → s ([chapter 06](06_sampling.py)). The noise's variance is
# σ_s² (1 − e^{-2h}) = (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s), DDIM's σ² at η = 1, and z is drawn once, as there.
#
# **Part 4.** Measured at full size (the full profile: 256 samples, the shipped v weights, this cell's
# seeds): 80.3 at 10 network calls and 65.0 at 20, the lowest of their columns.
# Only the gaps to DDIM (99.4 at 10, 86.0 at 20) and to DDPM at 10 (99.5) approach real ones, at about 1.4 to 1.6
# standard deviations of a difference (section 8 puts one at about 13 at 256 samples); against DDPM at 20 (70.9)
# and DPM-Solver++ (84.7, 79.5) the differences are within chance. Why it can help: fresh noise at every step
# washes out the network's early errors, as in DDPM, and the second-order D spends the few steps better, as in
# DPM-Solver++. On a network with small early errors, as this v network is, there is little left to wash out.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: part 2 shows both coefficients equal the posterior mean's of the jump t → s and the noise variance
#   DDIM's σ² at η = 1, with z drawn once; part 4 compares with the table's rows using the standard deviation of a
#   difference (section 8) and says which gaps are within chance.
# - **½ point**: one of the two parts complete, or both with a gap (the variance missing; differences read without
#   their uncertainty).
# - **0**: a numerical comparison in place of the derivation, and no reading of chance.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
