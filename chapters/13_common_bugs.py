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
# # 13 · Common bugs, and the tests that catch them
#
# A diffusion model with a bug still trains, its loss still falls, and its sampler still returns images.
# Most DDPM bugs give no error, only digits that are a little worse — or a lot worse, with no hint why.
# This chapter makes eight classic mistakes **on purpose**, two of them the reference implementation's own,
# each in a small setting that runs in seconds, and for each one shows
#
# - the **bug**: a small function in this chapter (never in `ddpm_lib`), named `buggy_…`;
# - the **symptom**: the number a learner would see, and where it helps a figure;
# - the **test**: a short check function that must *flag* the buggy version and *pass* the course's code
#   from `ddpm_lib`. Each one is also in the package's test suite, and the section says where.
#
# **After this chapter you can**
#
# - recognise the symptoms of eight classic DDPM bugs: in the forward process, the reverse step, the
#   network's normalisation, the data range, the training loss and the fast samplers;
# - turn each symptom into a test with a measurable pass/fail rule (a variance, a standard deviation,
#   a set of timesteps, a batch-invariance) instead of looking at samples;
# - use a *perfect denoiser* (one that knows $x_0$) to test a sampler's arithmetic without training anything;
# - find where `tests/` checks each of them, and run those tests.
#
# Symbols are those of the [notation](../notation.md) page; its first table is the one to keep at hand here,
# since several of these bugs live in the difference between the paper's indexing {cite:p}`ho2020ddpm` and the
# code's.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import copy
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import q_sample
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.generation import generate
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import predict_noise, reverse_step, sample, sample_clip, sample_loop
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import EMA, ddpm_loss, make_optimizer
from ddpm_lib.unet import REFERENCE_CONFIG, Unet

torch.manual_seed(0)
model, scheduler, provenance = load_pretrained()
model.requires_grad_(False)
T = scheduler.num_timesteps
heldout = load_mnist("heldout").tensors[0]
order = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(0))
digits = heldout[order[:64]]  # 64 held-out digits of mixed classes
n = PROFILE.bugs_samples
print(f"profile: {PROFILE.name}; shipped denoiser: {provenance['summary']}; {n} digits per sampled chain")

# %% [markdown]
# Three helpers serve every section. `verdict` runs a check the way pytest would and reports either
# `passes` or the assertion message a failing test would print. `roughness`, the mean absolute difference
# between neighbouring pixels, is a simple noise meter: real digits are smooth almost everywhere, noise is
# not. `show_rows` draws one row of images per entry.


# %%
def verdict(check, *args) -> str:
    """Run ``check(*args)``: 'passes', or 'caught: <its assertion message>'."""
    try:
        check(*args)
    except AssertionError as error:
        return f"caught: {error}"
    return "passes"


def run_check(check, candidates: dict[str, tuple]) -> dict[str, str]:
    """Apply ``check`` to every candidate's arguments; print and return the verdicts."""
    verdicts = {name: verdict(check, *args) for name, args in candidates.items()}
    width = max(map(len, verdicts))
    for name, result in verdicts.items():
        print(f"{name:>{width}}: {result}")
    return verdicts


def roughness(images: torch.Tensor) -> float:
    """Mean |difference| of horizontally adjacent pixels, images clamped to [-1, 1]: a noise meter."""
    x = images.clamp(-1, 1)
    return (x[..., 1:] - x[..., :-1]).abs().mean().item()


def show_rows(rows: dict[str, torch.Tensor], name: str) -> None:
    """One row of images per entry of ``rows`` (images in [-1, 1]), titled by its key."""
    columns = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.1 * columns + 0.4, 1.25 * len(rows)), squeeze=False
    )
    for row, (title, images) in enumerate(rows.items()):
        for column in range(columns):
            axes[row, column].axis("off")
            if column < len(images):
                axes[row, column].imshow(to_image(images[column]), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    save_figure(fig, name)
    plt.show()


pure_noise = torch.randn((64, 1, 28, 28), generator=torch.Generator().manual_seed(0))
print(f"roughness of real digits: {roughness(digits):.3f}; of pure noise: {roughness(pure_noise):.3f}")

# %%
assert roughness(digits) < 0.25 < 0.5 < roughness(pure_noise)

# %% [markdown]
# ## 1. Noising with $(1-\sqrt{\bar\alpha_t})\,\varepsilon$ instead of $\sqrt{1-\bar\alpha_t}\,\varepsilon$
#
# The reference implementation's training code writes the noise coefficient of $q(x_t \mid x_0)$ as
# $1-\sqrt{\bar\alpha_t}$. Both coefficients run from about 0 to about 1, so the images at $t = 0$ and
# $t = T-1$ look right. [Chapter 02](02_forward_process.py) derived what happens in between: $\operatorname{Var}(x_t) =
# \bar\alpha_t + (1-\sqrt{\bar\alpha_t})^2$ for unit-variance data, which falls to $\tfrac12$ where
# $\sqrt{\bar\alpha_t} = \tfrac12$.


# %%
def buggy_q_sample(scheduler, x0, t, noise):
    """The reference's forward process: noise coefficient 1 - sqrt(alpha_bar) instead of sqrt(1 - alpha_bar)."""
    alpha_bar = scheduler.alpha_bars[t]
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar.sqrt()) * noise


# %% [markdown]
# **Symptom.** On digits standardised to unit variance, the variance of $x_t$ at three timesteps, the
# middle one where $\sqrt{\bar\alpha_t}$ first drops below $\tfrac12$:

# %%
x0_unit = (digits - digits.mean()) / digits.std()
t_half = int((scheduler.alpha_bars.sqrt() < 0.5).nonzero()[0])
probe_t = [100, t_half, 700]
noise = torch.randn(x0_unit.shape, generator=torch.Generator().manual_seed(1))
variances = {
    name: [noising(scheduler, x0_unit, t, noise).var().item() for t in probe_t]
    for name, noising in (("q_sample", q_sample), ("buggy_q_sample", buggy_q_sample))
}
for name, values in variances.items():
    print(f"{name:>14}: " + ", ".join(f"Var(x_{t}) = {v:.3f}" for t, v in zip(probe_t, values, strict=True)))

# %%
assert all(abs(v - 1) < 0.03 for v in variances["q_sample"])
assert abs(variances["buggy_q_sample"][1] - 0.5) < 0.03

# %% [markdown]
# What it does to training: the network learns to remove *less* noise than sampling will hand it. The
# buggy images at label $t$ have a noise-to-signal ratio $(1-\sqrt{\bar\alpha_t})/\sqrt{\bar\alpha_t}$; a correct
# $x_{t'}$ has $\sqrt{(1-\bar\alpha_{t'})/\bar\alpha_{t'}}$. Solving for $t'$ says which noise level the network
# really learned under each label: far less noise early and in the middle, about the right amount near $T$.
# The shipped model (trained correctly) shows the mismatch from the other side: its loss on the buggy inputs.

# %%
correct_ratio = ((1 - scheduler.alpha_bars) / scheduler.alpha_bars).sqrt()  # increasing in t
label_t = probe_t
learned_t = [
    int(
        torch.searchsorted(
            correct_ratio, (1 - scheduler.alpha_bars[t].sqrt()) / scheduler.alpha_bars[t].sqrt()
        )
    )
    for t in label_t
]
for t, t_learned in zip(label_t, learned_t, strict=True):
    print(f"buggy training images labelled t = {t} are as noisy as correct ones at t = {t_learned}")
with torch.no_grad():
    shipped_loss = {
        name: F.mse_loss(
            predict_noise(model, noising(scheduler, digits, t_half, noise), t_half, scheduler), noise
        ).item()
        for name, noising in (("q_sample", q_sample), ("buggy_q_sample", buggy_q_sample))
    }
print(
    f"shipped model's loss at t = {t_half}: on q_sample inputs {shipped_loss['q_sample']:.4f}, "
    f"on buggy inputs {shipped_loss['buggy_q_sample']:.4f}"
)

# %%
assert learned_t[0] < 0.3 * label_t[0] and learned_t[1] < 0.8 * label_t[1] and learned_t[2] > 0.9 * label_t[2]
assert shipped_loss["buggy_q_sample"] > 3 * shipped_loss["q_sample"]

# %% [markdown]
# **The test.** Unit-variance data must keep unit variance at every $t$.


# %%
def check_variance_preserving(noising) -> None:
    """Var(x_t) = 1 for unit-variance x_0 at every t (every 50th), within Monte-Carlo error."""
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn((4096, 16), generator=generator)
    for t in range(0, T, 50):
        variance = noising(scheduler, x0, t, torch.randn(x0.shape, generator=generator)).var().item()
        assert abs(variance - 1) < 0.03, f"Var(x_t) = {variance:.3f} at t = {t}, expected 1"


verdicts = run_check(
    check_variance_preserving,
    {"buggy_q_sample": (buggy_q_sample,), "ddpm_lib.diffusion.q_sample": (q_sample,)},
)

# %%
assert verdicts["buggy_q_sample"].startswith("caught")
assert verdicts["ddpm_lib.diffusion.q_sample"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_diffusion.py::test_variance_preserving_for_unit_variance_data` and
# `::test_noise_coefficient_is_sqrt_one_minus_alpha_bar_not_one_minus_sqrt` catch this in `q_sample`;
# `tests/test_sampling.py::test_training_noises_with_sqrt_one_minus_alpha_bar` catches it in the training loss.
#
# ## 2. Reading $\bar\alpha_{t-1}$ at $t = 0$ from the end of the table
#
# The posterior variance is $\tilde\beta_t = \beta_t\,(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)$ with $\bar\alpha_{-1} = 1$, so
# $\tilde\beta_0 = 0$ and the last step adds no noise. The reference reads $\bar\alpha_{t-1}$ as
# `alpha_bars[t - 1]`, and at $t = 0$ Python's index $-1$ is the **last** entry, $\bar\alpha_{T-1}$. A sampler that
# trusts the formula to give zero noise at $t = 0$ — no `if t > 0` — then adds noise of variance:

# %%
wrapped_alpha_bar = scheduler.alpha_bars[-1].item()
wrapped_variance = (
    scheduler.betas[0] * (1 - scheduler.alpha_bars[-1]) / (1 - scheduler.alpha_bars[0])
).item()
wrapped_coef_xt = (
    scheduler.alphas[0].sqrt() * (1 - scheduler.alpha_bars[-1]) / (1 - scheduler.alpha_bars[0])
).item()
print(f"alpha_bars[0 - 1] = {wrapped_alpha_bar:.2e} instead of 1")
print(
    f"posterior variance at t = 0: {wrapped_variance:.4f} with the wrapped value, "
    f"{scheduler.posterior_variances[0].item():.1f} with 1"
)
print(f"posterior-mean coefficient of x_t at t = 0 (sample_clip's form): {wrapped_coef_xt:.0f} instead of 0")

# %%
assert abs(wrapped_variance - 1) < 1e-3 and scheduler.posterior_variances[0] == 0
assert wrapped_coef_xt > 1000 and scheduler.posterior_mean_coef_xt[0] == 0

# %% [markdown]
# A variance of almost exactly 1: the last step throws a unit of fresh noise over the finished digit. (In
# `sample_clip`'s form the wrapped value breaks the mean as well: the coefficient of $x_t$, which should be 0 at
# $t = 0$, becomes the huge number printed above.) The bug as a step function, on top of the Algorithm-2 mean
# of [chapter 06](06_sampling.py), which this section and the next share:


# %%
def algorithm_2_mean(scheduler, t: int, model, x_t: torch.Tensor) -> torch.Tensor:
    """(x_t − β_t / √(1 − ᾱ_t) · ε_θ(x_t, t)) / √α_t, the mean of DDPM's reverse step (correct)."""
    beta, alpha, alpha_bar = (
        float(table[t]) for table in (scheduler.betas, scheduler.alphas, scheduler.alpha_bars)
    )
    eps = predict_noise(model, x_t, t, scheduler)
    return (x_t - beta / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha)


def buggy_sample_wrapped(scheduler, t: int, model, x_t: torch.Tensor, generator=None) -> torch.Tensor:
    """ᾱ_{t−1} read as alpha_bars[t - 1] (the last entry at t = 0), and no `if t > 0` around the noise."""
    alpha_bar, alpha_bar_prev = scheduler.alpha_bars[t], scheduler.alpha_bars[t - 1]
    variance = scheduler.betas[t] * (1 - alpha_bar_prev) / (1 - alpha_bar)
    z = torch.randn(x_t.shape, generator=generator)
    return algorithm_2_mean(scheduler, t, model, x_t) + variance.sqrt() * z


# %% [markdown]
# **Symptom.** Run [chapter 06](06_sampling.py)'s 1000-step `sample()` chain, keep the image entering the last step, and take
# that step both ways.

# %%
entering = {}


def keep_last_input(t: int, x: torch.Tensor) -> None:
    if t == 0:
        entering[t] = x


generator = torch.Generator().manual_seed(0)
x_T = torch.randn((n, 1, 28, 28), generator=generator)
correct_samples = sample_loop(model, scheduler, x_T, clip=False, generator=generator, on_step=keep_last_input)
wrapped_samples = buggy_sample_wrapped(scheduler, 0, model, entering[0], torch.Generator().manual_seed(1))
print(
    f"roughness: real digits {roughness(digits):.3f}, sample() {roughness(correct_samples):.3f}, "
    f"wrapped last step {roughness(wrapped_samples):.3f}"
)
show_rows(
    {
        "real digits": digits[:n],
        "sample()": correct_samples,
        "last step with the wrapped alpha_bar": wrapped_samples,
    },
    "13_wrapped_last_step",
)

# %%
assert torch.allclose(sample(scheduler, 0, model, entering[0]), correct_samples)
assert roughness(correct_samples) < 2 * roughness(digits) < roughness(wrapped_samples)

# %% [markdown]
# **The test.** The step at $t = 0$ returns the sample, so it must not depend on the random numbers at all:
# two different generators, the same output.


# %%
def check_last_step_is_deterministic(step) -> None:
    """The reverse step at t = 0 draws no noise: two seeds give identical outputs."""
    x = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    a = step(scheduler, 0, model, x, torch.Generator().manual_seed(4))
    b = step(scheduler, 0, model, x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b), (
        f"the t = 0 step depends on the seed: outputs differ by up to {(a - b).abs().max():.3f}"
    )


verdicts = run_check(
    check_last_step_is_deterministic,
    {
        "buggy_sample_wrapped": (buggy_sample_wrapped,),
        "ddpm_lib.sampling.sample": (sample,),
        "ddpm_lib.sampling.sample_clip": (sample_clip,),
    },
)

# %%
assert verdicts["buggy_sample_wrapped"].startswith("caught")
assert verdicts["ddpm_lib.sampling.sample"] == verdicts["ddpm_lib.sampling.sample_clip"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_sampling.py::test_last_step_returns_clamped_x0_hat_and_draws_no_noise`
# (the generator is untouched at $t = 0$), `::test_the_step_at_t_zero_never_reads_the_end_of_the_alpha_bar_table` and
# `tests/test_schedule.py::test_no_wrap_around_at_t_zero` ($\bar\alpha_{-1} = 1$, $\tilde\beta_0 = 0$ in the tables).
#
# ## 3. A variance used as a standard deviation
#
# The reverse step adds $\sigma_t z$ with $\sigma_t = \sqrt{\tilde\beta_t}$ (or $\sqrt{\beta_t}$, DDPM's other choice,
# exercise 6.2). Writing `beta * z` or `posterior_variance * z` uses the variance where its square root belongs.
# Since every $\tilde\beta_t$ is below 0.02, that noise is at least seven times too small, and far more at small $t$:

# %%
for t in (10, 500, 999):
    variance = scheduler.posterior_variances[t].item()
    print(f"t = {t}: sigma_t = {math.sqrt(variance):.4f}, the variance used as std = {variance:.6f}")


# %%
assert all(math.sqrt(v) > 7 * v for v in scheduler.posterior_variances[1:].tolist())

# %% [markdown]
# The bug, on the same correct mean as in section 2:


# %%
def buggy_sample_variance_as_std(scheduler, t: int, model, x_t: torch.Tensor, generator=None) -> torch.Tensor:
    """Adds β̃_t · z: the posterior variance used as the noise's standard deviation."""
    mean = algorithm_2_mean(scheduler, t, model, x_t)
    if t == 0:
        return mean
    z = torch.randn(x_t.shape, generator=generator)
    return mean + scheduler.posterior_variances[t].item() * z


# %% [markdown]
# **Symptom.** The same 1000-step chain, from the same $x_T$ with the same seed, with the buggy step. Each step
# replaces the noise it removes with far less fresh noise, so the chain has almost no randomness left to explore
# with: every chain slides to the same few thin, smooth strokes. Two numbers show it: the share of *ink* pixels (brighter than mid-gray) falls, and so does the
# spread between samples (the pixel standard deviation across the batch, averaged over pixels).


# %%
def run_chain(step, x_T: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply ``step(scheduler, t, model, x, generator)`` for t = T-1, ..., 0."""
    x = x_T
    for t in range(T - 1, -1, -1):
        x = step(scheduler, t, model, x, generator)
    return x


generator = torch.Generator().manual_seed(0)
x_T = torch.randn((n, 1, 28, 28), generator=generator)
with torch.no_grad():
    smooth_samples = run_chain(buggy_sample_variance_as_std, x_T, generator)
sets = {"real digits": digits, "sample()": correct_samples, "variance as std": smooth_samples}
ink = {name: (images > 0).float().mean().item() for name, images in sets.items()}
spread = {name: images.clamp(-1, 1).std(dim=0).mean().item() for name, images in sets.items()}
for name in sets:
    print(f"{name:>16}: ink share {ink[name]:.3f}, spread between samples {spread[name]:.3f}")
show_rows({"sample()": correct_samples, "variance as std": smooth_samples}, "13_variance_as_std")

# %%
assert ink["variance as std"] < 0.5 * min(ink["real digits"], ink["sample()"])
assert spread["variance as std"] < 0.5 * min(spread["real digits"], spread["sample()"])

# %% [markdown]
# **The test.** Two runs of one step from the same $x_t$ with different seeds differ only by
# $\sigma_t (z_a - z_b)$, so the standard deviation of their difference, divided by $\sqrt 2$, *is* $\sigma_t$ —
# whatever the network and the mean. No access to the step's internals needed.


# %%
def check_noise_std(step) -> None:
    """std(step_a − step_b) / √2 = √β̃_t for two seeds, at several t (within 5%)."""
    x_t = torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(3))
    for t in (1, 10, 500, T - 1):
        a = step(scheduler, t, model, x_t, torch.Generator().manual_seed(4))
        b = step(scheduler, t, model, x_t, torch.Generator().manual_seed(5))
        measured = ((a - b).std() / math.sqrt(2)).item()
        expected = scheduler.posterior_variances[t].sqrt().item()
        assert abs(measured / expected - 1) < 0.05, (
            f"noise std {measured:.5f} at t = {t}, expected sqrt(posterior variance) = {expected:.5f}"
        )


verdicts = run_check(
    check_noise_std,
    {
        "buggy_sample_variance_as_std": (buggy_sample_variance_as_std,),
        "ddpm_lib.sampling.sample": (sample,),
        "ddpm_lib.sampling.sample_clip": (sample_clip,),
    },
)

# %%
assert verdicts["buggy_sample_variance_as_std"].startswith("caught")
assert verdicts["ddpm_lib.sampling.sample"] == verdicts["ddpm_lib.sampling.sample_clip"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_common_bugs.py::test_reverse_step_noise_std_is_the_posterior_std` (for
# [chapter 06](06_sampling.py)'s two samplers and [chapter 08](08_fast_sampling.py)'s jumps). The comparisons with `diffusers` in
# `tests/test_sampling.py` would catch it too, but only where `diffusers` is installed.
#
# ## 4. BatchNorm in train mode while sampling
#
# [Chapter 04](04_unet.py) measured why the course's U-Net uses GroupNorm {cite:p}`wu2018groupnorm`: in train mode, BatchNorm
# {cite:p}`ioffe2015batchnorm` normalises with the statistics of the current batch, so one image's prediction depends on the *other* images in it. The
# reference U-Net (`REFERENCE_CONFIG`) has BatchNorm, and a sampler that forgets `model.eval()` runs it in train
# mode. We build one and let a few train-mode passes over noisy digits move its running statistics, as training
# would (its weights stay random: the effect is in the normalisation, not in what the network has learned).

# %%
torch.manual_seed(0)
reference_unet = Unet(**REFERENCE_CONFIG).requires_grad_(False)
generator = torch.Generator().manual_seed(6)
with torch.no_grad():
    for _ in range(4):
        t = torch.randint(0, T, (16,), generator=generator)
        batch = digits[torch.randint(0, len(digits), (16,), generator=generator)]
        reference_unet(q_sample(scheduler, batch, t, torch.randn(batch.shape, generator=generator)), t)
parameters = sum(p.numel() for p in reference_unet.parameters())
print(f"reference U-Net: {parameters:,} parameters, norm={REFERENCE_CONFIG['norm']!r}")

# %% [markdown]
# **Symptom.** One noisy digit at $t = 300$, once in a batch whose other images are at $t = 10$ and once among
# images at $t = 900$; its predicted noise in each mode (on copies, so the running statistics stay put):

# %%
batch_noise = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(7))
prediction_change, prediction_std = {}, {}
for mode in ("train", "eval"):
    net = copy.deepcopy(reference_unet).train(mode == "train")
    predictions = []
    for companions in (10, 900):
        t = torch.full((8,), companions)
        t[0] = 300
        with torch.no_grad():
            predictions.append(net(q_sample(scheduler, digits[:8], t, batch_noise), t)[0])
    prediction_change[mode] = (predictions[0] - predictions[1]).abs().max().item()
    prediction_std[mode] = predictions[1].std().item()
    print(
        f"{mode} mode: the digit's prediction changes by up to {prediction_change[mode]:.3g} with its batch "
        f"(the prediction's own std: {prediction_std[mode]:.3g})"
    )

# %%
assert prediction_change["train"] > 0.1 * prediction_std["train"] and prediction_change["eval"] < 1e-5

# %% [markdown]
# **The test.** Ask for one image alone and inside a batch: the answers must agree. The check runs on a copy of
# the network, since a train-mode BatchNorm pass would update the running statistics. Applied to the network as
# a sampler that never calls `.eval()` runs it, and as `ddpm_lib`'s sampling loops run it: we hand
# `sample_loop` the network in train mode, as a training loop leaves it, and run the check from inside
# the loop through its `on_step` hook.


# %%
def check_batch_invariant(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor) -> None:
    """Image 0's prediction is the same alone and in its batch (on a copy of ``net``)."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        alone, together = net(x_t[:1], t[:1]), net(x_t, t)[:1]
    change = (alone - together).abs().max().item()
    mode = "train" if net.training else "eval"
    assert change < 1e-4, f"image 0's prediction changes by {change:.3g} with its batch ({mode} mode)"


x_T = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(8))
inside_the_loop = []
reference_unet.train()
sample_loop(
    reference_unet,
    scheduler,
    x_T,
    [T - 1],
    clip=False,
    on_step=lambda t, x: inside_the_loop.append(
        verdict(check_batch_invariant, reference_unet, x, torch.full((len(x),), t))
    ),
)
verdicts = {
    "never calls .eval()": verdict(check_batch_invariant, reference_unet, x_T, torch.full((8,), T - 1)),
    "inside ddpm_lib's loop": inside_the_loop[0],
}
for name, result in verdicts.items():
    print(f"{name:>22}: {result}")
print(f"after the loop the network is back in train mode: {reference_unet.training}")

# %%
assert verdicts["never calls .eval()"].startswith("caught")
assert verdicts["inside ddpm_lib's loop"] == "passes" and reference_unet.training

# %% [markdown]
# `ddpm_lib`'s loops don't trust their caller: each switches the network to eval mode and restores the mode it
# found. The reverse mistake — training in eval mode, where BatchNorm never updates its statistics — can't
# happen through `ddpm_lib.training.train_step`, which calls `model.train()` itself.
#
# **In the test suite:** `tests/test_unet.py::test_eval_mode_is_deterministic` (eval-mode batch invariance,
# including a BatchNorm configuration); `tests/test_common_bugs.py::test_every_sampling_loop_runs_the_network_in_eval_mode`,
# `::test_sampling_a_batchnorm_unet_left_in_train_mode_is_batch_invariant` and
# `::test_train_step_trains_in_train_mode`.
#
# ## 5. Data left in $[0, 1]$
#
# torchvision's `ToTensor()` gives pixels in $[0, 1]$; the course's model space is $[-1, 1]$ (`load_mnist`
# scales, [chapter 02](02_forward_process.py)). Forget the scaling and nothing fails. What changes:


# %%
def buggy_load_mnist(split: str) -> torch.Tensor:
    """The images as ToTensor() alone leaves them: [0, 1], background 0."""
    return (load_mnist(split, verbose=False).tensors[0] + 1) / 2


digits_01 = buggy_load_mnist("heldout")[order[:64]]  # the same 64 digits as `digits`
for name, images in (("[-1, 1] (load_mnist)", digits), ("[0, 1] (the bug)", digits_01)):
    print(
        f"{name:>20}: range [{images.min():.0f}, {images.max():.0f}], mean {images.mean():.3f}, "
        f"variance {images.var():.3f}"
    )

# %%
assert digits.min() == -1 and digits.max() == 1 and digits_01.min() == 0 and digits_01.max() == 1
assert torch.isclose(digits_01.var(), digits.var() / 4)

# %% [markdown]
# **Symptom 1: the schedule is wrong for the data.** Halving the data's scale quarters its variance, and with it
# the signal-to-noise ratio $\bar\alpha_t \operatorname{Var}(x_0) / (1-\bar\alpha_t)$ at every $t$: the digit drowns in
# noise much earlier, and a larger part of the chain is spent on images that are almost pure noise.

# %%
drowned = {
    name: int((scheduler.alpha_bars * images.var() < 1 - scheduler.alpha_bars).nonzero()[0])
    for name, images in (("[-1, 1]", digits), ("[0, 1]", digits_01))
}
print(
    f"first t where the noise outweighs the digit: [-1, 1] data t = {drowned['[-1, 1]']}, [0, 1] data t = {drowned['[0, 1]']}"
)

# %%
assert drowned["[0, 1]"] < 0.75 * drowned["[-1, 1]"]

# %% [markdown]
# **Symptom 2: a model trained in $[-1, 1]$ is wrong on $[0, 1]$ data** (fine-tuning the shipped weights on
# `ToTensor()` images, say). Its loss on the same digits in the two ranges:

# %%
range_loss = {}
with torch.no_grad():
    for t in (50, 300):
        for name, images in (("[-1, 1]", digits), ("[0, 1]", digits_01)):
            range_loss[name, t] = F.mse_loss(
                predict_noise(model, q_sample(scheduler, images, t, noise), t, scheduler), noise
            ).item()
        print(
            f"t = {t}: shipped model's loss on [-1, 1] digits {range_loss['[-1, 1]', t]:.4f}, "
            f"on [0, 1] digits {range_loss['[0, 1]', t]:.4f}"
        )

# %%
assert all(range_loss["[0, 1]", t] > 2 * range_loss["[-1, 1]", t] for t in (50, 300))

# %% [markdown]
# **Symptom 3: gray backgrounds.** A model of $[0, 1]$ data generates $[0, 1]$ images, with background 0. Every
# display and file writer of the course (`to_image`, `grid_image`) maps model space $[-1, 1]$ to black…white, so 0
# becomes mid-gray. (And `sample_clip` clamps $\hat x_0$ to $[-1, 1]$, half of which no such digit ever reaches.)
# Below, real digits in each range stand in for what a perfect model of that range would sample:

# %%
show_rows({"[-1, 1], displayed": digits[:8], "[0, 1], displayed": digits_01[:8]}, "13_data_range")
background = {
    name: to_image(images[0])[0, 0].item() for name, images in (("[-1, 1]", digits), ("[0, 1]", digits_01))
}
print(
    f"displayed background: [-1, 1] data {background['[-1, 1]']:.2f}, [0, 1] data {background['[0, 1]']:.2f}"
)

# %%
assert background["[-1, 1]"] == 0.0 and background["[0, 1]"] == 0.5

# %% [markdown]
# **The test.** In model space the background is $-1$ and the brightest ink $+1$.


# %%
def check_model_range(images: torch.Tensor) -> None:
    """Training images span exactly [-1, 1]."""
    low, high = images.min().item(), images.max().item()
    assert low == -1 and high == 1, f"images span [{low:.3f}, {high:.3f}], expected [-1, 1]"


verdicts = run_check(
    check_model_range,
    {
        "buggy_load_mnist": (buggy_load_mnist("train"),),
        "ddpm_lib.data.load_mnist": (load_mnist("train").tensors[0],),
    },
)

# %%
assert verdicts["buggy_load_mnist"].startswith("caught")
assert verdicts["ddpm_lib.data.load_mnist"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_data.py::test_subset_split_sizes_shapes_and_range` (the bundled subset);
# `tests/test_common_bugs.py::test_both_mnist_sources_scale_to_minus_one_one` (full MNIST through torchvision
# as well, whose own test only checks that the values lie *inside* $[-1, 1]$ — which $[0, 1]$ data do).
#
# ## 6. Drawing $t$ from $1, \dots, T-1$
#
# `torch.randint(1, T, …)` instead of `torch.randint(0, T, …)` — perhaps from the paper's 1-based indexing, perhaps
# from fear of $\bar\alpha_{t-1}$ at $t = 0$. The network never trains at $t = 0$, the very step whose output is
# the sample.


# %%
def buggy_ddpm_loss(model, scheduler, x0: torch.Tensor, generator=None) -> torch.Tensor:
    """ddpm_lib.training.ddpm_loss, but with t drawn from 1..T-1."""
    t = torch.randint(1, scheduler.num_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model(q_sample(scheduler, x0, t, noise), t), noise)


class TimestepSpy(nn.Module):
    """A stand-in denoiser that predicts zeros and records every batch of timesteps it is asked about."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return torch.zeros_like(x)


def timesteps_drawn(loss_fn, scheduler, draws: int, seed: int = 7) -> torch.Tensor:
    """Every t that one call of ``loss_fn`` on ``draws`` (1-pixel) images feeds the network."""
    spy = TimestepSpy()
    loss_fn(spy, scheduler, torch.zeros((draws, 1, 1, 1)), torch.Generator().manual_seed(seed))
    return torch.cat(spy.seen)


# %% [markdown]
# **Symptom, counted.** In 100,000 draws:

# %%
counts = {}
for name, loss_fn in (("ddpm_loss", ddpm_loss), ("buggy_ddpm_loss", buggy_ddpm_loss)):
    drawn = timesteps_drawn(loss_fn, scheduler, 100_000)
    counts[name] = [(drawn == t).sum().item() for t in (0, 1)]
    print(f"{name:>15}: t = 0 drawn {counts[name][0]} times, t = 1 drawn {counts[name][1]} times")

# %%
assert counts["buggy_ddpm_loss"][0] == 0 and min(counts["ddpm_loss"] + counts["buggy_ddpm_loss"][1:]) > 50

# %% [markdown]
# **Symptom, trained.** How much it hurts depends on the network. The course's sinusoidal time embedding puts
# $t = 0$ right next to $t = 1$, and the network generalises across the gap. The reference's learned table
# (`nn.Embedding`) has a row for $t = 0$ that only $t = 0$ trains. To see it in seconds, we train a tiny U-Net with
# a learned table on a 10-step schedule ($\beta$ from 0.05 to 0.5, so every row is drawn hundreds of times) and on
# digits shrunk to 14×14, twice from the same start: with the course's loss and with the buggy one.

# %%
short = LinearBetaScheduler(10, 0.05, 0.5)
train_small = F.avg_pool2d(load_mnist("train", verbose=False).tensors[0], 2)
heldout_small = F.avg_pool2d(heldout, 2)
torch.manual_seed(0)
tiny_start = Unet(timesteps=10, time_embedding_dim=16, base_dim=8, dim_mults=[2], time_embedding="learned")


def train_tiny(loss_fn, steps: int = 100) -> Unet:
    net = copy.deepcopy(tiny_start)
    optimizer = make_optimizer(net, lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = train_small[torch.randint(0, len(train_small), (64,), generator=generator)]
        loss = loss_fn(net, short, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def heldout_loss(net: Unet, t: int) -> float:
    noise = torch.randn(heldout_small.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        label = torch.full((len(heldout_small),), t)
        return F.mse_loss(net(q_sample(short, heldout_small, t, noise), label), noise).item()


tiny = {"ddpm_loss": train_tiny(ddpm_loss), "buggy_ddpm_loss": train_tiny(buggy_ddpm_loss)}
tiny_loss = {(name, t): heldout_loss(net, t) for name, net in tiny.items() for t in (0, 1)}
start_table = tiny_start.time_embedding.weight
row_moved = {
    name: ((net.time_embedding.weight - start_table).norm(dim=1) / start_table.norm(dim=1)).tolist()
    for name, net in tiny.items()
}
for name in tiny:
    print(
        f"{name:>15}: held-out loss at t = 0 {tiny_loss[name, 0]:.3f}, at t = 1 {tiny_loss[name, 1]:.3f}; "
        f"row 0 of the table moved {row_moved[name][0]:.1%}, row 1 {row_moved[name][1]:.1%}"
    )

# %%
assert tiny_loss["buggy_ddpm_loss", 0] > 1.5 * tiny_loss["ddpm_loss", 0]
assert abs(tiny_loss["buggy_ddpm_loss", 1] / tiny_loss["ddpm_loss", 1] - 1) < 0.2
assert row_moved["buggy_ddpm_loss"][0] < 0.02 < row_moved["ddpm_loss"][0]  # weight decay alone moved it

# %% [markdown]
# Row 0 moved only by AdamW's weight decay {cite:p}`loshchilov2019adamw`; at sampling time the last step uses that untrained row. Would you
# see it in the samples? Barely: the last step computes $\hat x_0 = (x_0 - \sqrt{1-\bar\alpha_0}\,\hat\varepsilon) /
# \sqrt{\bar\alpha_0}$, and with the course's schedule an error in $\hat\varepsilon$ reaches the image scaled by

# %%
last_step_factor = ((1 - scheduler.alpha_bars[0]) / scheduler.alpha_bars[0]).sqrt().item()
print(f"sqrt(1 - alpha_bar_0) / sqrt(alpha_bar_0) = {last_step_factor:.4f}")

# %%
assert 0.009 < last_step_factor < 0.011

# %% [markdown]
# — a bug that the images hide and only a test finds. **The test** counts: on a 10-step schedule, 10,000 draws
# must include every $t$ in $0..T-1$.


# %%
def check_every_timestep_trained(loss_fn) -> None:
    """The training loss feeds the network every t in 0..T-1."""
    drawn = set(timesteps_drawn(loss_fn, short, 10_000).tolist())
    missing = sorted(set(range(short.num_timesteps)) - drawn)
    assert not missing, f"the loss never trains t = {missing}"


verdicts = run_check(
    check_every_timestep_trained,
    {"buggy_ddpm_loss": (buggy_ddpm_loss,), "ddpm_lib.training.ddpm_loss": (ddpm_loss,)},
)

# %%
assert verdicts["buggy_ddpm_loss"] == "caught: the loss never trains t = [0]"
assert verdicts["ddpm_lib.training.ddpm_loss"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_common_bugs.py::test_training_loss_draws_every_timestep_uniformly`.
# (`tests/test_sampling.py::test_training_noises_with_sqrt_one_minus_alpha_bar` replays `ddpm_loss`'s exact
# random draws, so it fails too — but it tests the implementation, not the property.)
#
# ## 7. Leading spacing never reaches $t = T-1$
#
# A fast sampler visits a few of the $T$ timesteps ([chapter 08](08_fast_sampling.py)). *Leading* spacing, $k\lfloor T/n\rfloor$, never
# includes $T-1$, yet the chain still starts from pure noise — and tells the network that this noise is $x_{900}$
# (for $n = 10$), an image that in training always held a faint trace of a digit.


# %%
def buggy_timesteps(num_steps: int) -> torch.Tensor:
    """Leading spacing: the default of many DDIM implementations (diffusers' DDIMScheduler among them)."""
    return timesteps_for(T, num_steps, "leading")


# %% [markdown]
# **Symptom.** The signal the first step is told to expect, $\sqrt{\bar\alpha}$ at the first timestep, against what
# pure noise holds ($\sqrt{\bar\alpha_{T-1}}$, the floor of this schedule):

# %%
first_signal = {}
for steps in (10, 50):
    first = int(buggy_timesteps(steps)[0])
    first_signal[steps] = scheduler.alpha_bars[first].sqrt().item()
    print(f"n = {steps}: leading starts at t = {first}, sqrt(alpha_bar) = {first_signal[steps]:.4f}")
floor = scheduler.alpha_bars[T - 1].sqrt().item()
print(f"pure noise, t = {T - 1}: sqrt(alpha_bar) = {floor:.4f}")

# %%
assert first_signal[10] > 2 * floor and first_signal[50] > 1.1 * floor

# %% [markdown]
# How much the mismatch costs depends on the network and the sampler: on the shipped `ddpm_mnist`, [chapter 08](08_fast_sampling.py)
# measures no difference between the spacings for DDIM at 10 steps, and for DDPM a difference that one draw of
# 256 samples cannot settle. {cite:t}`lin2024flawed` show it costing quality on larger models. The mismatch is still a
# mismatch; the course's samplers default to trailing spacing, and a test pins that default down.
#
# **The test.** The first timestep of a chain that starts from pure noise is $T-1$. Applied to leading spacing,
# to trailing and linspace spacing, and to the first timestep that `generate` visits with its default spacing
# (recorded by its `on_step` hook):


# %%
def check_starts_at_pure_noise(timesteps) -> None:
    """A chain from x_T ~ N(0, I) must start at t = T - 1."""
    first = int(timesteps[0])
    assert first == T - 1, f"the chain starts at t = {first}; pure noise is t = {T - 1}"


visited = []
generate(model, scheduler, 1, sampler="ddim", steps=10, on_step=lambda t, x: visited.append(t))
verdicts = run_check(
    check_starts_at_pure_noise,
    {
        "leading, n = 10": (buggy_timesteps(10),),
        "trailing, n = 10": (timesteps_for(T, 10, "trailing"),),
        "linspace, n = 10": (timesteps_for(T, 10, "linspace"),),
        "generate's default": (visited,),
    },
)

# %%
assert verdicts["leading, n = 10"].startswith("caught") and len(visited) == 10
assert all(
    verdicts[name] == "passes" for name in ("trailing, n = 10", "linspace, n = 10", "generate's default")
)

# %% [markdown]
# **In the test suite:** `tests/test_fast_sampling.py::test_trailing_starts_at_the_last_timestep_and_leading_never_does`;
# `tests/test_common_bugs.py::test_fast_samplers_start_at_T_minus_1_by_default`.
#
# ## 8. Skipping steps with the single-step $\beta_t$
#
# A chain that jumps from $t$ to $s < t$ needs the jump's own $\beta_{t\to s} = 1 - \bar\alpha_t/\bar\alpha_s$ ([chapter 08](08_fast_sampling.py),
# after {cite:t}`nichol2021improved`).
# The classic bug loops [chapter 06](06_sampling.py)'s one-step update over the shorter list of timesteps:


# %%
def buggy_respaced_step(
    scheduler, t: int, t_prev: int, model, x_t: torch.Tensor, generator=None
) -> torch.Tensor:
    """Jumps to t_prev with chapter 06's single-step update: β_t, α_t and ᾱ_{t−1} instead of the jump's."""
    return sample(scheduler, t, model, x_t, generator)


jumps = timesteps_for(T, 20).tolist()
t, s = jumps[0], jumps[1]
beta_jump = 1 - (scheduler.alpha_bars[t] / scheduler.alpha_bars[s]).item()
print(
    f"first jump of 20 trailing steps, {t} -> {s}: beta_t = {scheduler.betas[t]:.4f}, beta_t->s = {beta_jump:.4f}"
)

# %%
assert beta_jump > 20 * scheduler.betas[t]

# %% [markdown]
# Each jump removes about one step's worth of noise instead of fifty. `reverse_step` and the bug agree
# exactly when the jump *is* one step, and only then:

# %%
x_t = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(9))
gap = {}
for t, s in ((500, 499), (500, 450)):
    ours = reverse_step(scheduler, t, s, model, x_t, generator=torch.Generator().manual_seed(10))
    bug = buggy_respaced_step(scheduler, t, s, model, x_t, generator=torch.Generator().manual_seed(10))
    gap[t, s] = (ours - bug).abs().max().item()
    print(f"jump {t} -> {s}: max |reverse_step - buggy_respaced_step| = {gap[t, s]:.2e}")

# %%
assert gap[500, 499] < 1e-4 < 0.1 < gap[500, 450]

# %% [markdown]
# **Symptom.** Twenty jumps from the same $x_T$, both ways:


# %%
def run_jumps(step, x_T: torch.Tensor, timesteps: list[int], generator: torch.Generator) -> torch.Tensor:
    """Apply ``step(scheduler, t, t_prev, model, x, generator=...)`` along ``timesteps`` and on to the clean end (-1)."""
    x = x_T
    for t, t_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
        x = step(scheduler, t, t_prev, model, x, generator=generator)
    return x


respaced = {}
for name, step in (("reverse_step", reverse_step), ("buggy_respaced_step", buggy_respaced_step)):
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((n, 1, 28, 28), generator=generator)
    with torch.no_grad():
        respaced[name] = run_jumps(step, x_T, jumps, generator)
generator = torch.Generator().manual_seed(0)
library = sample_loop(
    model, scheduler, torch.randn((n, 1, 28, 28), generator=generator), jumps, clip=False, generator=generator
)
print(
    f"roughness after 20 jumps: reverse_step {roughness(respaced['reverse_step']):.3f}, "
    f"buggy_respaced_step {roughness(respaced['buggy_respaced_step']):.3f} (real digits {roughness(digits):.3f})"
)
show_rows(respaced, "13_respaced_single_step_beta")

# %%
assert torch.allclose(library, respaced["reverse_step"], atol=1e-5)  # run_jumps is the library's loop
assert roughness(respaced["reverse_step"]) < 2 * roughness(digits)
assert roughness(respaced["buggy_respaced_step"]) > 3 * roughness(respaced["reverse_step"])

# %% [markdown]
# **The test: a perfect denoiser.** Testing a sampler's arithmetic needs no trained network. Noise known digits
# $x_0$ to $x_t$ with `q_sample` and give the step an *oracle* that returns the exact noise,
# $\varepsilon = (x_t - \sqrt{\bar\alpha_t}\,x_0)/\sqrt{1-\bar\alpha_t}$. A correct jump $t \to s$ must then turn a draw of
# $q(x_t \mid x_0)$ into a draw of $q(x_s \mid x_0)$: the residual $x_s - \sqrt{\bar\alpha_s}\,x_0$ has variance
# $1-\bar\alpha_s$ — and 0 at the clean end, $s = -1$. We check every jump of a 10-step trailing chain.


# %%
def oracle_for(x0: torch.Tensor):
    """A perfect noise predictor for images noised from ``x0``: ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""

    def predict(x_t, t):
        alpha_bar = scheduler.alpha_bars[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    return predict


def check_jumps_keep_the_marginal(step) -> None:
    """With a perfect denoiser, Var(x_s − √ᾱ_s x_0) = 1 − ᾱ_s after every jump t → s (ᾱ_{−1} = 1), within 5%."""
    x0 = digits[:8]
    steps = timesteps_for(T, 10).tolist()
    for t, s in zip(steps, [*steps[1:], -1], strict=True):
        x_t = q_sample(scheduler, x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)))
        x_s = step(scheduler, t, s, oracle_for(x0), x_t, generator=torch.Generator().manual_seed(t + 1))
        alpha_bar_s = 1.0 if s < 0 else scheduler.alpha_bars[s].item()
        variance = (x_s - math.sqrt(alpha_bar_s) * x0).var().item()
        assert abs(variance - (1 - alpha_bar_s)) <= 0.05 * (1 - alpha_bar_s) + 1e-6, (
            f"jump {t} -> {s}: Var(x_s - sqrt(alpha_bar_s) x_0) = {variance:.4f}, expected {1 - alpha_bar_s:.4f}"
        )


verdicts = run_check(
    check_jumps_keep_the_marginal,
    {
        "buggy_respaced_step": (buggy_respaced_step,),
        "ddpm_lib.sampling.reverse_step": (reverse_step,),
    },
)

# %%
assert verdicts["buggy_respaced_step"].startswith("caught")
assert verdicts["ddpm_lib.sampling.reverse_step"] == "passes"

# %% [markdown]
# **In the test suite:** `tests/test_common_bugs.py::test_respaced_jumps_keep_the_marginal_of_q` (the oracle
# check, for the respaced DDPM step and DDIM with $\eta = 1$); `tests/test_sampling.py::test_respaced_chain_matches_diffusers_ddpm_scheduler`.
#
# ## 9. The tests, in one place
#
# | bug | symptom | the test in `tests/` |
# |---|---|---|
# | 1. $(1-\sqrt{\bar\alpha_t})\,\varepsilon$ | $\operatorname{Var}(x_t)$ falls to ½ mid-schedule | `test_diffusion.py::test_variance_preserving_for_unit_variance_data`, `test_sampling.py::test_training_noises_with_sqrt_one_minus_alpha_bar` |
# | 2. `alpha_bars[t - 1]` at $t = 0$ | a unit of noise over every finished sample | `test_sampling.py::test_last_step_returns_clamped_x0_hat_and_draws_no_noise`, `test_schedule.py::test_no_wrap_around_at_t_zero` |
# | 3. variance as std | too little noise: thin, smooth, look-alike samples | `test_common_bugs.py::test_reverse_step_noise_std_is_the_posterior_std` |
# | 4. BatchNorm in train mode | a prediction that depends on the batch | `test_unet.py::test_eval_mode_is_deterministic`, `test_common_bugs.py::test_every_sampling_loop_runs_the_network_in_eval_mode` |
# | 5. data in $[0, 1]$ | earlier drowning, wrong loss, gray backgrounds | `test_data.py::test_subset_split_sizes_shapes_and_range`, `test_common_bugs.py::test_both_mnist_sources_scale_to_minus_one_one` |
# | 6. $t$ from $1..T-1$ | $t = 0$ never trained | `test_common_bugs.py::test_training_loss_draws_every_timestep_uniformly` |
# | 7. leading spacing | the first step mislabels pure noise | `test_fast_sampling.py::test_trailing_starts_at_the_last_timestep_and_leading_never_does`, `test_common_bugs.py::test_fast_samplers_start_at_T_minus_1_by_default` |
# | 8. single-step $\beta_t$ on a respaced chain | samples stay noisy | `test_common_bugs.py::test_respaced_jumps_keep_the_marginal_of_q` |
#
# `python -m pytest tests/test_common_bugs.py` runs the ones this chapter added; the README's test command runs
# them all.
#
# ## Summary
#
# - DDPM bugs rarely raise errors. They shift a variance, a noise level or a label, and show up as worse
#   samples — or, like $t = 0$ never trained, not visibly at all. Test the property, not the picture.
# - Most of them are caught by one of a few measurements: the **variance** of $q(x_t \mid x_0)$; the **noise**
#   a reverse step adds (two seeds, one difference: no access to internals needed); the **marginal** a step
#   produces under a perfect denoiser; the **set of timesteps** the loss and the samplers use;
#   **batch invariance** of the network as the sampler runs it; the **range** of the data.
# - A perfect denoiser, one that knows $x_0$, tests a sampler's arithmetic exactly, with no training.
# - The reference implementation's two bugs — the $(1-\sqrt{\bar\alpha_t})$ coefficient and the wrapped
#   $\bar\alpha_{t-1}$ at $t = 0$ — each have a regression test in `tests/`, as do the other six.
#
# ## Exercises
#
# Each exercise has a cell for your solution and, right after it, a cell that checks it (its first line is
# `# Check`). The solution between the two marker comments is ours: try the exercise before you read it.
#
# :::{exercise} 13.1 · ★☆☆ · $\bar\alpha_{t-1}$ without the wrap
# :nonumber:
#
# Write `alpha_bar_prev(scheduler, t)` returning $\bar\alpha_{t-1}$ as a Python float for an integer $t$ in
# $0..T-1$, reading only `scheduler.alpha_bars` — and returning $1$ at $t = 0$ instead of the table's last entry.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def alpha_bar_prev(scheduler, t: int) -> float:
    ### BEGIN SOLUTION
    return 1.0 if t == 0 else float(scheduler.alpha_bars[t - 1])
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 13.1
for t in (0, 1, 2, 500, T - 1):
    assert alpha_bar_prev(scheduler, t) == float(scheduler.alpha_bars_prev[t]), t
assert alpha_bar_prev(scheduler, 0) != float(scheduler.alpha_bars[-1])
### BEGIN HIDDEN TESTS
assert alpha_bar_prev(LinearBetaScheduler(3), 0) == 1.0
assert alpha_bar_prev(LinearBetaScheduler(3), 2) == float(LinearBetaScheduler(3).alpha_bars[1])
### END HIDDEN TESTS
print("Exercise 13.1 passed")

# %% [markdown]
# :::{exercise} 13.2 · ★★☆ · The paper counts from 1
# :nonumber:
#
# DDPM's Algorithm 2 loops $t = T, \dots, 1$. Translated to 0-based code, a classic slip is
# `range(T - 1, 0, -1)`, which never takes the last step ($t = 0$) — the sample is then a slightly noisy $x_0$,
# hard to tell by eye. Write `labels_seen(loop)`: run `loop(schedule, network, x_T)` with the 20-step schedule
# `LinearBetaScheduler(20, 1e-3, 0.2)`, a `TimestepSpy` (section 6) as the network and $x_T$ of shape
# (2, 1, 4, 4), and return the timestep labels the network was called with, in call order, as a list of ints
# (one per call). For a correct loop that is $19, 18, \dots, 0$.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def labels_seen(loop) -> list[int]:
    ### BEGIN SOLUTION
    spy = TimestepSpy()
    x_T = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    loop(LinearBetaScheduler(20, 1e-3, 0.2), spy, x_T)
    return [int(t[0]) for t in spy.seen]
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 13.2
def library_loop(schedule, network, x_T):
    return sample_loop(network, schedule, x_T, clip=False, generator=torch.Generator().manual_seed(1))


def skips_the_last_step(schedule, network, x_T):
    x = x_T
    for t in range(schedule.num_timesteps - 1, 0, -1):
        x = sample(schedule, t, network, x)
    return x


assert labels_seen(library_loop) == list(range(19, -1, -1))
assert labels_seen(skips_the_last_step) != list(range(19, -1, -1))
### BEGIN HIDDEN TESTS
assert labels_seen(skips_the_last_step) == list(range(19, 0, -1))
### END HIDDEN TESTS
print("Exercise 13.2 passed")

# %% [markdown]
# :::{exercise} 13.3 · ★★☆ · An EMA that forgets BatchNorm's statistics
# :nonumber:
#
# [Chapter 04](04_unet.py) warned that an exponential moving average which averages only `parameters()` leaves BatchNorm's
# running statistics (they are *buffers*) at their initial values, so the averaged model normalises with mean 0
# and variance 1. Write `check_ema_copies_buffers(ema_class)`: build a small BatchNorm U-Net,
# `Unet(timesteps=10, time_embedding_dim=8, base_dim=8, dim_mults=[2], norm="batch")`, wrap it in
# `ema = ema_class(net)`, run one train-mode forward pass of random 8×8 images (it moves the running statistics),
# call `ema.update(net)`, and `assert` that every buffer of `ema.model` equals the network's. The check tries it
# on `ddpm_lib.training.EMA` (which must pass) and on an EMA that skips buffers (which must be caught).
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def check_ema_copies_buffers(ema_class) -> None:
    ### BEGIN SOLUTION
    torch.manual_seed(0)
    net = Unet(timesteps=10, time_embedding_dim=8, base_dim=8, dim_mults=[2], norm="batch")
    ema = ema_class(net)
    net.train()
    with torch.no_grad():
        net(torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 6, 9]))
    ema.update(net)
    for (name, average), live in zip(ema.model.named_buffers(), net.buffers(), strict=True):
        assert torch.equal(average, live), f"EMA buffer {name} differs from the network's"
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 13.3
class ParametersOnlyEMA(EMA):
    """Averages the parameters and forgets the buffers."""

    @torch.no_grad()
    def update(self, model):
        decay = self.current_decay()
        for average, live in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(live.detach(), 1.0 - decay)
        self.num_updates += 1


check_ema_copies_buffers(EMA)
assert verdict(check_ema_copies_buffers, ParametersOnlyEMA).startswith("caught")
### BEGIN HIDDEN TESTS
assert verdict(check_ema_copies_buffers, EMA) == "passes"
### END HIDDEN TESTS
print("Exercise 13.3 passed")

# %% [markdown]
# :::{exercise} 13.4 · ★★★ · One test for any reverse step
# :nonumber:
#
# The checks of sections 2, 3 and 8 each catch one bug. Write one check that catches any slip in the arithmetic of
# a single reverse step: `check_reverse_step(step)`, for a `step(scheduler, t, model, x_t, generator)` with
# `sample()`'s signature. Use the perfect denoiser of section 8 (`oracle_for`): when $x_t$ is a draw of
# $q(x_t \mid x_0)$ and the network knows $x_0$, a correct step returns a draw of the forward posterior
# $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t(x_t, x_0), \tilde\beta_t I)$ — the schedule's `posterior_mean_coef_x0`,
# `posterior_mean_coef_xt` and `posterior_variances` give both. Test the mean *and* the spread of the step's
# output around $\tilde\mu_t$ at $t = 0, 1, 10, 500$ and $T-1$ (at $t = 0$, $\tilde\beta_0 = 0$: the output must be
# $\tilde\mu_0 = x_0$ itself), and fail with an `AssertionError` that says what is wrong. The check runs your test on
# [chapter 06](06_sampling.py)'s `sample` and `sample_clip`, which must pass, and on a set of *mutants*, steps with one slip each,
# which must all be caught; some of the mutants are hidden. Why does the perfect denoiser make this test exact,
# where a trained network would need tolerances for its own errors?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def check_reverse_step(step) -> None:
    ### BEGIN SOLUTION
    x0 = digits[:8]
    oracle = oracle_for(x0)
    for t in (0, 1, 10, 500, T - 1):
        x_t = q_sample(scheduler, x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(t)))
        mean = scheduler.posterior_mean_coef_x0[t] * x0 + scheduler.posterior_mean_coef_xt[t] * x_t
        with torch.no_grad():
            residual = step(scheduler, t, oracle, x_t, torch.Generator().manual_seed(t + 1)) - mean
        sigma = scheduler.posterior_variances[t].sqrt().item()
        if t == 0:
            error = residual.abs().max().item()
            assert error < 1e-4, f"t = 0: the step returns x0 + {error:.3g}, expected x0 exactly"
            continue
        spread, offset = residual.std().item(), residual.mean().item()
        assert abs(spread / sigma - 1) < 0.05, f"t = {t}: noise std {spread:.5f}, expected {sigma:.5f}"
        limit = 5 * sigma / residual.numel() ** 0.5
        assert abs(offset) < limit, (
            f"t = {t}: mean off the posterior mean by {offset:.5f} (limit {limit:.5f})"
        )
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 13.4
def step_with(mean_of, std_of):
    """A reverse step from a mean rule mean_of(scheduler, t, eps, x_t) and a noise rule std_of(scheduler, t)."""

    def step(scheduler, t, model, x_t, generator=None):
        eps = predict_noise(model, x_t, t, scheduler)
        z = torch.randn(x_t.shape, generator=generator)
        return mean_of(scheduler, t, eps, x_t) + std_of(scheduler, t) * z

    return step


def correct_std(s, t):
    return s.posterior_variances[t].sqrt()


mutants = {
    "divides by sqrt(alpha_bar_t)": step_with(
        lambda s, t, eps, x: (x - s.betas[t] / (1 - s.alpha_bars[t]).sqrt() * eps) / s.alpha_bars[t].sqrt(),
        correct_std,
    ),
    "eps term with the wrong sign": step_with(
        lambda s, t, eps, x: (x + s.betas[t] / (1 - s.alpha_bars[t]).sqrt() * eps) / s.alphas[t].sqrt(),
        correct_std,
    ),
    "section 2: the wrapped alpha_bar": buggy_sample_wrapped,
    "section 3: a variance as std": buggy_sample_variance_as_std,
}
for correct in (
    sample,
    sample_clip,
    step_with(lambda s, t, eps, x: algorithm_2_mean(s, t, lambda *_: eps, x), correct_std),
):
    check_reverse_step(correct)
for name, mutant in mutants.items():
    result = verdict(check_reverse_step, mutant)
    print(f"{name:>34}: {result}")
    assert result.startswith("caught"), name
### BEGIN HIDDEN TESTS
hidden = {
    "eps coefficient without the square root": step_with(
        lambda s, t, eps, x: (x - s.betas[t] / (1 - s.alpha_bars[t]) * eps) / s.alphas[t].sqrt(), correct_std
    ),
    "posterior variance ratio upside down": step_with(
        lambda s, t, eps, x: algorithm_2_mean(s, t, lambda *_: eps, x),
        lambda s, t: (s.betas[t] * (1 - s.alpha_bars[t]) / (1 - s.alpha_bars_prev[t])).sqrt(),
    ),
}
for name, mutant in hidden.items():
    assert verdict(check_reverse_step, mutant).startswith("caught"), name
### END HIDDEN TESTS
print("Exercise 13.4 passed")

# %% [markdown]
# **Your answer (13.4, 1 point, graded by hand).** Why does the perfect denoiser make this test exact?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# with the oracle, x̂0 is exactly x0, so the step's mean must be exactly the
# posterior mean and its noise exactly σ_t z — any deviation is the step's own arithmetic. With a trained
# network the mean would be off by the network's error, which is largest exactly where these bugs hide
# (small t, large t), and a tolerance wide enough for that error would let small slips through.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: with the oracle, x̂₀ is exactly x₀, so the mean must be exactly the posterior mean and the noise exactly σ_t z; a trained network's error is largest where the bugs hide (small and large t), and a tolerance wide enough for it would let slips through.
# - **½ point**: says the oracle has no error, without why tolerances would hide the bugs.
# - **0**: no reason.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
