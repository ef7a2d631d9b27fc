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
# # 12 · Inpainting with an unconditional model
#
# Cover part of a digit and ask the model to fill it in. The shipped denoiser never saw a mask: it
# was trained ([chapter 05](05_training.py)) on whole images, to predict $v$ (from which the samplers recover the noise,
# [chapter 06](06_sampling.py)). Yet it can inpaint, with no
# retraining, because the forward process noises every pixel on its own. This chapter derives the
# simplest method that exploits this, shows where it falls short, fixes it with RePaint's
# resampling {cite:p}`lugmayr2022repaint`, and measures both on held-out digits. Symbols are those of the
# [notation](../notation.md) page.
#
# **After this chapter you can**
#
# - describe a region to fill as a mask, and build six kinds of them with `make_mask`;
# - derive the *replacement* method from the forward process: after every reverse step, overwrite
#   the known pixels with a fresh noisy copy of the original at the new noise level;
# - explain why replacement leaves the two regions poorly matched, and how RePaint's resampling
#   (jump back with $q(x_t \mid x_s)$, denoise again) harmonises them, at a cost in network calls you
#   can state in advance;
# - measure an inpainting method: the evaluation classifier's accuracy on the filled digits and the
#   error in the missing region, next to baselines that fill nothing;
# - inpaint from the command line: `python -m ddpm_lib inpaint --mask left`.

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
import torch
from tqdm.auto import tqdm

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import prediction_of, q_sample, q_step
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.metrics import classify
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.precision import choose
from ddpm_lib.pretrained import load_classifier, load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import sample_loop

torch.manual_seed(0)
# this chapter's chains run on the CPU, in the precision it computes fast in (chapter 04, section 11)
cpu = choose("cpu")
model, scheduler, provenance = load_pretrained()
model.requires_grad_(False)
classifier, classifier_provenance = load_classifier()
heldout_images, heldout_labels = load_mnist("heldout").tensors
T = scheduler.num_timesteps
print(f"profile: {PROFILE.name}; shipped denoiser: {provenance['summary']}")
print(f"evaluation classifier: {classifier_provenance['summary']}")

# %% [markdown]
# ## 1. Masks
#
# A mask $m$ has the image's shape and says which pixels we keep: $m = 1$ where the pixel is
# **known**, $m = 0$ where it is **missing** and must be filled. With $\odot$ the pixelwise product,
# $m \odot x$ is the known part of an image and $(1 - m) \odot x$ the missing part.
#
# `make_mask(kind, n)` builds `n` masks of shape (n, 1, 28, 28); `kind` names the part that is
# missing: the `"left"`, `"right"`, `"top"` or `"bottom"` half, a `"centre"` square (14 × 14 by
# default, a quarter of the image), or `"random"` pixels (80% by default, drawn anew for each of the
# `n` masks). The exported cell starts the module `ddpm_lib.inpainting`; its argument checks reuse
# [chapter 08](08_fast_sampling.py)'s.

# %%
#| default_exp inpainting
#| export
import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from ddpm_lib.checks import check_choice, check_generator, check_int, check_sample
from ddpm_lib.diffusion import q_sample
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.sampling import alpha_bar_at, reverse_step
from ddpm_lib.schedule import NoiseSchedule

#: the kinds of :func:`make_mask`, each named after the part of the image that is missing
MASK_KINDS = ("left", "right", "top", "bottom", "centre", "random")


def make_mask(
    kind: str,
    n: int = 1,
    size: int = 28,
    *,
    missing: float | None = None,
    square: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``n`` masks, float32 (n, 1, size, size): 1 where a pixel is known, 0 where it is missing.

    ``kind`` (one of :data:`MASK_KINDS`) names the missing part: ``"left"`` / ``"top"``: the first
    ⌊size/2⌋ columns / rows; ``"right"`` / ``"bottom"``: the rest; ``"centre"``: a ``square`` × ``square``
    square in the middle (default size // 2); ``"random"``: round(``missing`` · size²) pixels per mask
    (``missing`` default 0.8), drawn independently for each mask with ``generator``.
    """
    check_choice(kind, "kind", MASK_KINDS)
    n = check_int(n, "n", 1, 10**9)
    size = check_int(size, "size", 2, 10**4)
    if square is not None and kind != "centre":
        raise ValueError(f"square applies only to kind 'centre', got square={square!r} with kind {kind!r}")
    if missing is not None and kind != "random":
        raise ValueError(f"missing applies only to kind 'random', got missing={missing!r} with kind {kind!r}")
    check_generator(generator)
    half = size // 2
    known = torch.ones((n, 1, size, size))
    if kind == "left":
        known[..., :half] = 0
    elif kind == "right":
        known[..., half:] = 0
    elif kind == "top":
        known[..., :half, :] = 0
    elif kind == "bottom":
        known[..., half:, :] = 0
    elif kind == "centre":
        side = half if square is None else check_int(square, "square", 1, size)
        start = (size - side) // 2
        known[..., start : start + side, start : start + side] = 0
    else:
        missing = 0.8 if missing is None else missing
        if isinstance(missing, bool) or not isinstance(missing, numbers.Real) or not 0 <= missing <= 1:
            raise ValueError(
                f"missing must be the share of missing pixels, a number in [0, 1], got {missing!r}"
            )
        count = round(float(missing) * size * size)
        for one in known:  # each mask its own draw
            one.view(-1)[torch.randperm(size * size, generator=generator)[:count]] = 0
    return known


# %% [markdown]
# One held-out digit under each kind of mask. The missing pixels are shown grey (the value 0, halfway
# between the black background at −1 and the white ink at +1), which is $m \odot x$.

# %%
digit = heldout_images[heldout_labels == 2][0]
one_of_each = {kind: make_mask(kind, generator=torch.Generator().manual_seed(0))[0] for kind in MASK_KINDS}
fig, axes = plt.subplots(1, len(one_of_each) + 1, figsize=(1.4 * (len(one_of_each) + 1), 1.8))
axes[0].imshow(to_image(digit), cmap="gray")
axes[0].set_title("original", fontsize=8)
for ax, (kind, mask) in zip(axes[1:], one_of_each.items(), strict=True):
    ax.imshow(to_image(mask * digit), cmap="gray")
    ax.set_title(kind, fontsize=8)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "12_masks")
plt.show()

# %%
shares = {kind: 1 - mask.mean().item() for kind, mask in one_of_each.items()}
print("share of missing pixels:", {kind: round(share, 3) for kind, share in shares.items()})
assert all(share == 0.5 for kind, share in shares.items() if kind in ("left", "right", "top", "bottom"))
assert shares["centre"] == 0.25 and round(0.8 * 784) == (1 - one_of_each["random"]).sum() == 627
# opposite halves are complementary
assert torch.equal(one_of_each["left"] + one_of_each["right"], torch.ones(1, 28, 28))
assert torch.equal(one_of_each["top"] + one_of_each["bottom"], torch.ones(1, 28, 28))
two = make_mask("random", 2, generator=torch.Generator().manual_seed(0))
assert not torch.equal(two[0], two[1])  # each random mask is its own draw

# %% [markdown]
# ## 2. The replacement method
#
# We want a sample of the missing pixels given the known ones, $x_0^{\text{miss}} \sim p(\cdot \mid x_0^{\text{known}})$,
# from a model of whole images. Two facts from earlier chapters do most of the work.
#
# **The forward process treats pixels independently.** Its closed form ([chapter 02](02_forward_process.py))
#
# $$ q(x_s \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_s}\,x_0,\ (1-\bar\alpha_s)\,I\right) $$
#
# has a diagonal covariance: each pixel of $x_s$ is its own pixel of $x_0$, scaled, plus its own noise.
# So the known pixels of $x_s$ depend only on the known pixels of $x_0$, which we have:
#
# $$ x_s^{\text{known}} = \sqrt{\bar\alpha_s}\,x_0 + \sqrt{1-\bar\alpha_s}\,\varepsilon, \qquad \varepsilon \sim \mathcal N(0, I), $$
#
# is an exact sample of the known region at noise level $s$ — `q_sample(scheduler, x0, s, noise)`.
#
# **The reverse step sees the whole image.** The network's step $p_\theta(x_s \mid x_t)$ ([chapters 06](06_sampling.py)
# and 08) takes all of $x_t$, so its output for the missing pixels depends on the known ones.
#
# Put together: run the reverse chain on the whole image, and after every step $t \to s$ overwrite the known
# pixels with a fresh forward sample of the original at the new level,
#
# $$ x_s = m \odot x_s^{\text{known}} + (1 - m) \odot x_s^{\text{model}}, \qquad
#    x_s^{\text{known}} \sim q(x_s \mid x_0), \quad x_s^{\text{model}} \sim p_\theta(x_s \mid x_t) . $$
#
# The chain starts from pure noise $x_T \sim \mathcal N(0, I)$ and ends with the step to the clean end
# ($s = -1$, $\bar\alpha_{-1} = 1$, [chapter 08](08_fast_sampling.py)), where $q(x_{-1} \mid x_0)$ is $x_0$ itself: the result's known
# pixels are *exactly* the original's. Like [chapter 08](08_fast_sampling.py) we run it on a respaced chain of $S$ timesteps with
# [chapter 06](06_sampling.py)'s stochastic DDPM step `reverse_step(scheduler, t, s, ...)`, so it costs $S$ network calls
# ({cite:t}`song2021sde` use the same idea for what they call imputation). Every step reads the schedule's $\bar\alpha$ table and assumes
# nothing else about it, so the method works for any `NoiseSchedule`.
#
# **What is approximate.** In the true joint distribution the known and missing pixels of $x_s$ are
# correlated through $x_0$; here the known part is drawn from $q(x_s \mid x_0)$ *without looking* at the missing
# part the model has built so far, and the model only learns about the known region through the noisy
# pixels it is shown. Early in the chain those carry little signal ($\sqrt{\bar\alpha_s}$ is small), so the model
# commits to a rough shape in the missing region that need not fit the known one; late in the chain each
# step changes little, and the mismatch stays. The result tends to be two plausible half-images that don't
# join up ({cite:t}`lugmayr2022repaint`, §4.2).
#
# ## 3. RePaint: jump back and try again
#
# RePaint's remedy is to give the model more chances to make the two regions agree at the *same* noise
# level. After a step $t \to s$ and the replacement, noise the combined $x_s$ forward again to level $t$ and repeat
# the step; do this $r$ times, then move on. Every round the network sees the combined image, known and
# missing regions together, and its prediction pulls the missing region toward one that fits.
#
# Going forward from $s$ to a later $t$ needs $q(x_t \mid x_s)$, the forward process between two noise levels. The
# chain $x_s \to x_{s+1} \to \dots \to x_t$ multiplies the signal by $\sqrt{\alpha_{s+1}\cdots\alpha_t} = \sqrt{\bar\alpha_t/\bar\alpha_s}$
# and adds just the noise that keeps a unit-variance image at unit variance ([chapter 02](02_forward_process.py)'s variance
# preservation):
#
# $$ q(x_t \mid x_s) = \mathcal N\!\left(\sqrt{\bar\alpha_t/\bar\alpha_s}\;x_s,\ \left(1-\bar\alpha_t/\bar\alpha_s\right) I\right) . $$
#
# With $s = t-1$ it is [chapter 02](02_forward_process.py)'s single step `q_step` ($\bar\alpha_t/\bar\alpha_{t-1} = \alpha_t$); with $s = -1$ it is
# `q_sample`.


# %%
#| export
def q_jump(scheduler: NoiseSchedule, x_s: torch.Tensor, s: int, t: int, noise: torch.Tensor) -> torch.Tensor:
    r"""The forward process from noise level ``s`` to a later ``t`` in one jump, x_t ~ q(x_t | x_s):

    x_t = √(ᾱ_t / ᾱ_s) · x_s + √(1 − ᾱ_t / ᾱ_s) · noise,  with ᾱ_{−1} = 1 (s = −1: ``x_s`` is a clean image).
    ``s`` in −1..T−2, ``t`` in s+1..T−1; ``noise`` ~ N(0, I) shaped like ``x_s``.
    """
    s = check_int(s, "s", -1, scheduler.num_timesteps - 2)
    t = check_int(t, "t", s + 1, scheduler.num_timesteps - 1)
    check_sample(x_s, "x_s")
    if not isinstance(noise, torch.Tensor) or noise.shape != x_s.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor shaped like x_s {tuple(x_s.shape)}, got {got}")
    ratio = alpha_bar_at(scheduler, t) / alpha_bar_at(scheduler, s)
    return math.sqrt(ratio) * x_s + math.sqrt(1.0 - ratio) * noise


# %% [markdown]
# Three checks: the two special cases, and a Monte-Carlo check that noising a pixel to $s$ with `q_sample`
# and on to $t$ with `q_jump` gives the distribution `q_sample` gives for $t$ directly.

# %%
x_check = torch.rand((4, 1, 28, 28), generator=torch.Generator().manual_seed(1)) * 2 - 1
noise = torch.randn(x_check.shape, generator=torch.Generator().manual_seed(2))
assert torch.allclose(
    q_jump(scheduler, x_check, 499, 500, noise), q_step(scheduler, x_check, 500, noise), atol=1e-6
)
assert torch.allclose(
    q_jump(scheduler, x_check, -1, 300, noise), q_sample(scheduler, x_check, 300, noise), atol=1e-6
)
generator = torch.Generator().manual_seed(3)
pixel = torch.full((PROFILE.monte_carlo_samples, 1), 0.7)
two_jumps = q_jump(
    scheduler,
    q_sample(scheduler, pixel, 200, torch.randn(pixel.shape, generator=generator)),
    200,
    600,
    torch.randn(pixel.shape, generator=generator),
)
mean, std = scheduler.alpha_bars[600].sqrt() * 0.7, (1 - scheduler.alpha_bars[600]).sqrt()
print(
    f"q_sample to 200, q_jump to 600: mean {two_jumps.mean():.4f} (exact {mean:.4f}), "
    f"std {two_jumps.std():.4f} (exact {std:.4f}); {len(pixel):,} draws"
)
assert abs(two_jumps.mean() - mean) < 5 * std / len(pixel) ** 0.5
assert abs(two_jumps.std() - std) < 0.02

# %% [markdown]
# **What resampling costs.** On a chain of $S$ steps, each step but the last is taken $1 + r$ times (the last,
# to the clean end, sets the known pixels to $x_0$ exactly; there is nothing to harmonise after it):
#
# $$ \text{network calls} = S + r\,(S - 1) . $$
#
# The paper runs a 250-step chain and goes over each stretch of 10 steps 10 times: roughly ten network calls
# per step. We keep a CPU budget: this chapter's measurement uses the profile's $S$ and $r$, and section 6 also
# gives the replacement method the *same* number of calls as RePaint, spent on a longer chain, to check that
# resampling and not the extra calls is what helps.
#
# ## 4. One function for both
#
# `inpaint` runs the chain with `resample` = $r$ rounds of resampling per step; $r = 0$ is the replacement
# method. One generator supplies $x_T$ and every noise draw, so a seed fixes the result. When no pixel is
# known, nothing is drawn for the known region, and the chain is [chapter 06](06_sampling.py)'s `sample_loop` on the same respaced
# timesteps, from the same seed, exactly.


# %%
#| export
def _check_inputs(model, x0: torch.Tensor, mask: torch.Tensor, generator) -> torch.Tensor:
    """Check inpaint's image, mask and generator; return the mask as x0's dtype, on x0's device."""
    if isinstance(model, torch.Tensor) or not callable(model):
        raise ValueError(f"model must be a denoising network model(x_t, t), got {type(model).__name__}")
    check_sample(x0, "x0")
    if not torch.isfinite(x0).all() or x0.min() < -1 or x0.max() > 1:
        raise ValueError(
            f"x0 must lie in [-1, 1] (the model's range), got values in [{x0.min().item():.3g}, {x0.max().item():.3g}]"
        )
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor of 1 (known) and 0 (missing), got {type(mask).__name__}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != x0.shape:
        raise ValueError(
            f"mask must broadcast to x0's shape {tuple(x0.shape)}, e.g. (1, 1, H, W), got {tuple(mask.shape)}"
        )
    if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 1 (known) and 0 (missing), e.g. from make_mask")
    check_generator(generator)
    return mask.to(device=x0.device, dtype=x0.dtype)


def _replace_known(
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    x_model: torch.Tensor,
    s: int,
    noise: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """m ⊙ x_s^known + (1 − m) ⊙ x_model, with x_s^known = q_sample(x0, s, noise()), and x0 itself at s = −1."""
    if s < 0:
        known = x0
    elif mask.any():
        known = q_sample(scheduler, x0, s, noise())
    else:  # nothing is known: draw nothing, so the chain is the unconditional sampler's exactly
        return x_model
    return mask * known + (1 - mask) * x_model


@torch.no_grad()
def inpaint(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    mask: torch.Tensor,
    num_steps: int = 50,
    resample: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Fill the missing pixels (``mask`` = 0) of ``x0`` (B, C, H, W) in [−1, 1]; returns the same shape in [−1, 1].

    DDPM on ``num_steps`` respaced timesteps (chapter 08, trailing spacing) from x_T ~ N(0, I). After each
    step t → s the known pixels are replaced: x_s = m ⊙ q_sample(x0, s, ε) + (1 − m) ⊙ x_s^model, with x0
    itself at the last step (s = −1), so the result's known pixels are exactly ``x0``'s. With ``resample``
    = r > 0 (RePaint), each step but the last is repeated r more times after jumping back with
    q(x_t | x_s); network calls: num_steps + r · (num_steps − 1). ``mask`` holds 1 (known) and 0 (missing)
    and broadcasts to ``x0``; every random number comes from ``generator``.
    """
    mask = _check_inputs(model, x0, mask, generator)
    timesteps = timesteps_for(scheduler.num_timesteps, num_steps).tolist()
    if isinstance(resample, bool) or not isinstance(resample, numbers.Integral) or resample < 0:
        raise ValueError(
            f"resample must be a non-negative integer (0: the replacement method), got {resample!r}"
        )

    def noise() -> torch.Tensor:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    x = noise()
    try:
        for t, s in zip(timesteps, [*timesteps[1:], -1], strict=True):
            for round_ in range(int(resample) + 1):
                x_model = reverse_step(scheduler, t, s, model, x, generator=generator)
                x_s = _replace_known(scheduler, x0, mask, x_model, s, noise)
                if s < 0 or round_ == resample:
                    break
                x = q_jump(scheduler, x_s, s, t, noise())  # back to level t: try the step again
            x = x_s
    finally:
        if was_training:
            model.train()
    return x.clamp(-1.0, 1.0)


# %% [markdown]
# Three quick checks on one digit: with every pixel known the output is the original, bit for bit; with
# none known it is [chapter 08](08_fast_sampling.py)'s sampler from the same seed, bit for bit; and a small counter around the
# network confirms the cost formula.


# %%
class CountCalls(torch.nn.Module):
    """Wraps a network and counts its forward calls. The network is ``self.model``: that is where the samplers
    look for what it predicts (`prediction_of`, chapter 02), so a v-network is still read as one."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t):
        self.calls += 1
        return self.model(x, t)


one = heldout_images[:1]
assert torch.equal(inpaint(model, scheduler, one, torch.ones(1, 1, 28, 28), num_steps=3), one)
nothing_known = inpaint(
    model, scheduler, one, torch.zeros(1, 1, 28, 28), 3, 0, torch.Generator().manual_seed(0)
)
generator = torch.Generator().manual_seed(0)
x_T = torch.randn(one.shape, generator=generator)
assert torch.equal(
    nothing_known,
    sample_loop(
        model, scheduler, x_T, timesteps_for(scheduler.num_timesteps, 3), clip=False, generator=generator
    ).clamp(-1, 1),
)
steps, resample = PROFILE.inpaint_steps, PROFILE.inpaint_resample
counted = CountCalls(model)
assert prediction_of(counted) == prediction_of(model)  # the wrapper hides nothing the samplers read
inpaint(counted, scheduler, one, make_mask("centre"), steps, resample, torch.Generator().manual_seed(0))
print(
    f"S = {steps} steps, r = {resample} resamplings: {counted.calls} network calls "
    f"(replacement: {steps}, {counted.calls / steps:.2f}x)"
)
assert counted.calls == steps + resample * (steps - 1)

# %% [markdown]
# ## 5. One masked digit, many answers
#
# Inpainting is sampling: the missing region has many plausible fillings, and different noise gives different
# ones. Eight copies of one held-out 9 with its top half missing, inpainted with RePaint in one batch (each
# copy draws its own noise), and what the evaluation classifier reads in each.

# %%
nine = heldout_images[heldout_labels == 9][0]
copies = nine.expand(8, 1, 28, 28).clone()
top = make_mask("top")
completions = inpaint(model, scheduler, copies, top, steps, resample, torch.Generator().manual_seed(0))
_, probabilities = classify(classifier, completions)
read_as = probabilities.argmax(1).tolist()
fig, axes = plt.subplots(1, 10, figsize=(12, 1.6))
for ax, image, title in zip(
    axes, [nine, top[0] * nine, *completions], ["original", "masked", *map(str, read_as)], strict=True
):
    ax.imshow(to_image(image), cmap="gray")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "12_many_answers")
plt.show()

# %%
spread = completions[:, :, :14].std(0).mean().item()  # across the 8 copies, in the missing top half
print(f"the classifier reads the 8 completions as {read_as}")
print(
    f"spread of the filled pixels across the copies (std): {spread:.3f}; known pixels identical: "
    f"{torch.equal(completions[:, :, 14:], copies[:, :, 14:])}"
)
assert len(read_as) == 8 and all(0 <= d <= 9 for d in read_as)
assert torch.equal(completions[:, :, 14:], copies[:, :, 14:])
assert spread > 0.05  # the copies were filled differently

# %% [markdown]
# ## 6. Measuring it
#
# A figure shows a handful of digits; a measurement needs many, and a way to score a filling when many
# fillings are right. We take the first `PROFILE.inpaint_digits_per_class` held-out digits of every class
# (digits the denoiser never trained on), cover each with each of the six masks, and score every filled
# digit two ways:
#
# - **accuracy**: does [chapter 07](07_evaluation.py)'s evaluation classifier read the true label? A filling that turns a 7 into
#   a 1 is a plausible digit but a wrong answer;
# - **masked MSE**: the mean squared error over the *missing* pixels only, in the model's range $[-1, 1]$
#   (the known pixels are exact for every method, so they would only dilute it). It rewards the original
#   digit, not just any plausible one, so it is a strict score for a sampler.
#
# Next to the two methods, three rows that inpaint nothing: the original digits (the ceiling: what the
# classifier gets right with nothing missing), **background fill** (missing pixels set to −1, the black
# background: the masked image as a classifier would see it) and **grey fill** (missing pixels set to 0, the
# masked image as the figures show it). And one row that tests the reason for RePaint's gain: the replacement
# method given RePaint's number of network calls, spent on a longer chain. The network runs in the precision the
# CPU computes fast in (`cpu.autocast()`; bfloat16 where it has the instructions), the chain itself in float32.
# In the full profile (300 masked digits) the next cell takes about three minutes on a 2-core laptop, with a progress
# bar over the three methods.

# %%
per_class = PROFILE.inpaint_digits_per_class
index = torch.cat([torch.nonzero(heldout_labels == c).flatten()[:per_class] for c in range(10)])
digits, labels = heldout_images[index], heldout_labels[index]
n_digits = len(digits)
generator = torch.Generator().manual_seed(1)
masks = torch.cat([make_mask(kind, n_digits, generator=generator) for kind in MASK_KINDS])
originals, true_labels = digits.repeat(len(MASK_KINDS), 1, 1, 1), labels.repeat(len(MASK_KINDS))
same_calls = steps + resample * (steps - 1)
REPLACEMENT = f"replacement, {steps} steps"
LONGER = f"replacement, {same_calls} steps"
REPAINT = f"RePaint, {steps} steps, r = {resample}"
methods = {REPLACEMENT: (steps, 0), LONGER: (same_calls, 0), REPAINT: (steps, resample)}  # (steps, r)
filled = {
    "original (ceiling)": originals,
    "background fill (-1)": masks * originals - (1 - masks),
    "grey fill (0)": masks * originals,
}
calls, seconds = dict.fromkeys(filled, 0), {}
for name, (num_steps, r) in tqdm(methods.items(), desc="methods", disable=not PROFILE.progress):
    counted = CountCalls(model)
    start = time.perf_counter()
    with cpu.autocast():
        filled[name] = inpaint(
            counted, scheduler, originals, masks, num_steps, r, torch.Generator().manual_seed(0)
        )
    seconds[name], calls[name] = time.perf_counter() - start, counted.calls


def masked_error(images: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image: the mean squared error over the missing pixels (mask = 0)."""
    missing = 1 - mask
    return ((images - reference) ** 2 * missing).flatten(1).sum(1) / missing.flatten(1).sum(1)


def scores(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per mask kind: the classifier's accuracy against the true labels, and the MSE over the missing pixels."""
    _, probs = classify(classifier, images)
    correct = (torch.from_numpy(probs.argmax(1)) == true_labels).float()
    mse = masked_error(images, originals, masks)
    return correct.view(len(MASK_KINDS), n_digits).mean(1), mse.view(len(MASK_KINDS), n_digits).mean(1)


accuracy, masked_mse = {}, {}
for name, images in filled.items():
    accuracy[name], masked_mse[name] = scores(images)


def print_table(title: str, values: dict[str, torch.Tensor], decimals: int) -> None:
    print(f"{title:<36}{'calls':>6}" + "".join(f"{kind:>8}" for kind in MASK_KINDS) + f"{'mean':>8}")
    for name, row in values.items():
        cells = "".join(f"{v:>8.{decimals}f}" for v in [*row.tolist(), row.mean().item()])
        print(f"{name:<36}{calls[name]:>6}{cells}")


print(
    f"{n_digits} held-out digits ({per_class} per class) under each of the {len(MASK_KINDS)} masks; "
    "calls: network calls per digit"
)
print_table("accuracy (classifier vs true label)", accuracy, 2)
print()
print_table("MSE over the missing pixels", masked_mse, 3)
total = sum(seconds.values())
print(
    f"\ninpainting took {total:.0f} s: {1000 * total / (len(originals) * sum(calls.values())):.2f} ms "
    "per image per network call"
)

# %%
for name, images in filled.items():
    assert images.shape == originals.shape and images.abs().max() <= 1, name
    assert torch.equal(masks * images, masks * originals), name  # the known pixels are exactly the original
    assert torch.isfinite(masked_mse[name]).all() and ((accuracy[name] >= 0) & (accuracy[name] <= 1)).all()
assert calls[REPAINT] == calls[LONGER] == same_calls and calls[REPLACEMENT] == steps
assert masked_mse["original (ceiling)"].max() == 0
centre = MASK_KINDS.index("centre")
assert masked_mse["background fill (-1)"].argmax() == centre  # the middle of a digit holds the most ink
mean_mse = {name: row.mean().item() for name, row in masked_mse.items()}
mean_accuracy = {name: row.mean().item() for name, row in accuracy.items()}
print("ranked by the mean masked MSE over all masks (lower is better), with the mean accuracy:")
for name in sorted(mean_mse, key=mean_mse.get):
    print(f"    {name:<36} MSE {mean_mse[name]:.3f}   accuracy {mean_accuracy[name]:.2f}")
# the gaps, paired: every method filled the same digits under the same masks
per_image_mse = {name: masked_error(images, originals, masks) for name, images in filled.items()}
per_image_correct = {
    name: (torch.from_numpy(classify(classifier, images)[1].argmax(1)) == true_labels).float()
    for name, images in filled.items()
}


def paired(values: dict[str, torch.Tensor], a: str, b: str) -> tuple[float, float]:
    """Mean of values[a] - values[b] over the digit-mask pairs, and its standard error."""
    difference = values[a] - values[b]
    return difference.mean().item(), (difference.std() / len(difference) ** 0.5).item()


gaps = {}
print(
    f"\nRePaint minus each other row, paired over {len(originals)} digit-mask pairs (± one standard error):"
)
for other in (REPLACEMENT, LONGER, "background fill (-1)"):
    gaps[other] = paired(per_image_mse, REPAINT, other), paired(per_image_correct, REPAINT, other)
    (mse, mse_se), (acc, acc_se) = gaps[other]
    print(f"    vs {other:<28} masked MSE {mse:+.3f} ± {mse_se:.3f}   accuracy {acc:+.3f} ± {acc_se:.3f}")
if n_digits >= 50:  # what the text below reads off the table, checked where the digits are enough to show it
    assert mean_mse[REPAINT] < min(mean_mse[REPLACEMENT], mean_mse[LONGER], mean_mse["background fill (-1)"])
    assert mean_accuracy[REPAINT] > max(mean_accuracy[REPLACEMENT], mean_accuracy[LONGER])
else:
    print(f"({n_digits} digits per mask in the {PROFILE.name} profile: too few to rank the methods)")

# %% [markdown]
# The same runs, as pictures: three of the digits under every mask — original, masked, replacement, RePaint.

# %%
shown = [c * per_class for c in (3, 5, 8)]  # the first digit of three classes
columns = {
    "original": originals,
    "masked": filled["grey fill (0)"],
    "replacement": filled[REPLACEMENT],
    "RePaint": filled[REPAINT],
}
fig, axes = plt.subplots(
    len(MASK_KINDS), 4 * len(shown), figsize=(1.0 * 4 * len(shown), 1.1 * len(MASK_KINDS))
)
for row, kind in enumerate(MASK_KINDS):
    for group, d in enumerate(shown):
        for column, (title, images) in enumerate(columns.items()):
            ax = axes[row, 4 * group + column]
            ax.imshow(to_image(images[row * n_digits + d]), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    axes[row, 0].set_ylabel(kind, fontsize=8)
fig.tight_layout()
save_figure(fig, "12_inpainting_grid")
plt.show()

# %%
panels = torch.tensor([row * n_digits + d for row in range(len(MASK_KINDS)) for d in shown])
for title in ("replacement", "RePaint"):
    error = masked_error(columns[title][panels], originals[panels], masks[panels])
    print(f"{title}: MSE over the missing pixels of the {len(panels)} panels, mean {error.mean():.3f}")
    assert 0 < error.mean() <= 4  # squared differences of values in [-1, 1]
    assert torch.equal(columns[title][panels] * masks[panels], originals[panels] * masks[panels])
assert torch.equal(true_labels[panels[: len(shown)]], torch.tensor([3, 5, 8]))

# %% [markdown]
# **Reading the table.** (The claims below are checked in the full profile, in the cell after the table;
# with the handful of digits of the CI profile the rows are too noisy to rank.)
#
# - **The baselines are not straw men.** MNIST is mostly background, so filling with black is right for most
#   missing pixels, and a sampler that draws a confident stroke in the wrong place pays twice in MSE (ink where
#   there is none, none where there is ink). Half a digit can be enough for the classifier, too. Grey fill
#   shows what an image unlike any it was trained on does to the classifier. The centre square costs background
#   fill the most masked MSE, since the middle of a digit holds the most ink; that ranking of the masks holds
#   for background fill, not for grey.
# - **More steps are not more agreement.** The replacement method given RePaint's budget on a longer chain
#   takes smaller steps, but still never lets the model look again at the two regions together at one noise
#   level; it does not reach RePaint on either score.
# - **RePaint's resampling is what helps.** It has the lowest mean masked MSE of every row but the ceiling,
#   background fill included, and more of its digits are read as the right class than with either
#   replacement run. Where the table has enough digits, look at which masks gain most, and compare with
#   the picture above.
#
# ## 7. From the command line
#
# ```bash
# python -m ddpm_lib inpaint --mask left --n 8 --out inpaint.png                  # RePaint, 50 steps, r = 4
# python -m ddpm_lib inpaint --mask random --resample 0 --steps 100 --seed 3       # the replacement method
# python -m ddpm_lib inpaint --mask centre --checkpoint runs/my_run/checkpoints/last.pt
# ```
#
# picks `--n` held-out digits (by `--seed`), masks them and writes a PNG of three rows: the originals, the
# masked digits (missing pixels grey) and the inpainted ones. It prints how many network calls each digit
# cost.
#
# ## Summary
#
# - A mask marks the known pixels ($m = 1$) and the missing ones ($m = 0$); `make_mask` builds halves, a
#   centre square and random pixels.
# - The forward process noises pixels independently, so the known region of $x_s$ can be sampled exactly from
#   the original. The **replacement method** runs the reverse chain on the whole image and after every step
#   overwrites the known pixels with $q(x_s \mid x_0)$, and with $x_0$ itself at the last step: known pixels come
#   out exact, with no retraining. $S$ steps cost $S$ network calls.
# - Its flaw: the known region is drawn without regard to what the model has built in the missing one, so the
#   two need not fit together. **RePaint** jumps back to the previous noise level with
#   $q(x_t \mid x_s) = \mathcal N(\sqrt{\bar\alpha_t/\bar\alpha_s}\,x_s, (1-\bar\alpha_t/\bar\alpha_s) I)$ and takes the step
#   again, $r$ times per step: $S + r(S-1)$ network calls.
# - Measured on held-out digits with the evaluation classifier's accuracy and the MSE over the missing
#   pixels, next to background and grey fill and the originals: resampling, not the extra network calls,
#   is what improves the filling.
# - `ddpm_lib.inpainting` holds `make_mask`, `q_jump` and `inpaint`; `python -m ddpm_lib inpaint` runs it.
#
# ## Exercises
#
# :::{exercise} 12.1 · ★☆☆ · Outpainting
# :nonumber:
#
# Inpainting the *border* of an image is called outpainting. Write `frame_mask(size=28, border=4)`: one mask
# of shape (1, 1, size, size), float32, 1 inside and 0 on the outermost `border` rows and columns. Then
# outpaint a few digits with `inpaint`: does the model draw anything in the frame?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def frame_mask(size: int = 28, border: int = 4) -> torch.Tensor:
    ### BEGIN SOLUTION
    mask = torch.zeros((1, 1, size, size))
    mask[..., border : size - border, border : size - border] = 1
    return mask
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 12.1
frame = frame_mask()
assert frame.shape == (1, 1, 28, 28) and frame.dtype == torch.float32
assert set(frame.unique().tolist()) == {0.0, 1.0}
assert (frame == 0).sum() == 28 * 28 - 20 * 20 and frame[0, 0, 4:24, 4:24].eq(1).all()
outpainted = inpaint(model, scheduler, heldout_images[:2], frame, 2, 0, torch.Generator().manual_seed(3))
assert torch.equal(outpainted * frame, heldout_images[:2] * frame)
### BEGIN HIDDEN TESTS
assert (frame_mask(10, 1) == 0).sum() == 100 - 64 and frame_mask(10, 1)[0, 0, 0].eq(0).all()
### END HIDDEN TESTS
print("Exercise 12.1 passed")

# %% [markdown]
# **Your answer (12.1, 1 point, graded by hand).** Does the model draw anything in the frame?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# almost nothing. MNIST centres every digit in a 20 × 20 box, so in training the outer four rows
# and columns are black background nearly always, and the model fills the frame with background: on 50
# held-out digits (shipped weights, 50 steps, r = 4) the frame got about 2 ink pixels of its 384 per digit,
# as many as the originals have there. Outpainting works the same way as inpainting; on MNIST it has
# little to do.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: almost nothing: MNIST centres each digit in a 20 × 20 box, so the training frame is background and the model fills it with background (about as many ink pixels as the originals have there).
# - **½ point**: says nothing is drawn without the reason.
# - **0**: expects strokes to be extended into the frame.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 12.2 · ★★☆ · The replacement method by hand
# :nonumber:
#
# Write `replacement_inpaint(model, scheduler, x0, mask, num_steps, generator)` without `inpaint`: draw
# $x_T$ = `torch.randn(x0.shape, generator=generator)`; then for each jump $t \to s$ of the chain
# (`timesteps_for(scheduler.num_timesteps, num_steps)`, followed by $s = -1$), take the model's step with
# `reverse_step(scheduler, t, s, model, x, generator=generator)` and replace the known pixels by
# `q_sample(scheduler, x0, s, torch.randn(x0.shape, generator=generator))` (by `x0` itself when $s = -1$). Return the
# result clamped to $[-1, 1]$. Drawn in this order, your random numbers are `inpaint`'s, and the check compares
# with `inpaint(..., resample=0)`.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def replacement_inpaint(model, scheduler, x0, mask, num_steps: int, generator=None) -> torch.Tensor:
    ### BEGIN SOLUTION
    timesteps = timesteps_for(scheduler.num_timesteps, num_steps).tolist()
    x = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        for t, s in zip(timesteps, [*timesteps[1:], -1], strict=True):
            x_model = reverse_step(scheduler, t, s, model, x, generator=generator)
            known = x0 if s < 0 else q_sample(scheduler, x0, s, torch.randn(x0.shape, generator=generator))
            x = mask * known + (1 - mask) * x_model
    return x.clamp(-1, 1)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 12.2
x0, centre = heldout_images[[0, 100, 200]], make_mask("centre")
ours = replacement_inpaint(model, scheduler, x0, centre, 5, torch.Generator().manual_seed(4))
theirs = inpaint(model, scheduler, x0, centre, 5, resample=0, generator=torch.Generator().manual_seed(4))
assert torch.allclose(ours, theirs, atol=1e-6)
assert torch.equal(ours * centre, x0 * centre)
### BEGIN HIDDEN TESTS
left = make_mask("left")
assert torch.allclose(
    replacement_inpaint(model, scheduler, x0, left, 1, torch.Generator().manual_seed(5)),
    inpaint(model, scheduler, x0, left, 1, 0, torch.Generator().manual_seed(5)),
    atol=1e-6,
)
### END HIDDEN TESTS
print("Exercise 12.2 passed")

# %% [markdown]
# :::{exercise} 12.3 · ★★★ · Longer time travel
# :nonumber:
#
# `inpaint` jumps back one step at a time. RePaint's paper jumps back *several*: it takes `jump` steps, noises
# the result back to where the stretch began in one forward jump, and takes the same `jump` steps again. Write
# `inpaint_jump(model, scheduler, x0, mask, num_steps, resample, jump, generator)`:
#
# - every step of the chain except the last (the one to the clean end) belongs to a *block* of `jump`
#   consecutive steps (the last block may be shorter); each step is a replacement step, as in exercise 12.2;
# - after a block, jump back from its last $s$ to its first $t$ with `q_jump` and run the block again, `resample`
#   times; then the next block; the final step to the clean end runs once;
# - draw random numbers in `inpaint`'s order: $x_T$ first; in each step the model step's, then the known
#   region's; one draw per jump back.
#
# With `jump=1` this is `inpaint` exactly. How many network calls does it make, and how does that depend on
# `jump`? Then measure `jump=5` on the digits and masks of section 6 (same steps, $r$ and seed as its RePaint row)
# and compare it with that row.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def inpaint_jump(model, scheduler, x0, mask, num_steps: int, resample: int, jump: int, generator=None):
    ### BEGIN SOLUTION
    timesteps = timesteps_for(scheduler.num_timesteps, num_steps).tolist()
    pairs = list(zip(timesteps, [*timesteps[1:], -1], strict=True))

    def noise():
        return torch.randn(x0.shape, generator=generator)

    def step(t, s, x):
        x_model = reverse_step(scheduler, t, s, model, x, generator=generator)
        known = x0 if s < 0 else q_sample(scheduler, x0, s, noise())
        return mask * known + (1 - mask) * x_model

    x = noise()
    with torch.no_grad():
        noisy = pairs[:-1]
        for start in range(0, len(noisy), jump):
            block = noisy[start : start + jump]
            for round_ in range(resample + 1):
                for t, s in block:
                    x = step(t, s, x)
                if round_ < resample:
                    x = q_jump(scheduler, x, block[-1][1], block[0][0], noise())
        x = step(*pairs[-1], x)
    return x.clamp(-1, 1)
    ### END SOLUTION


### BEGIN SOLUTION
# The measurement: section 6's digits, masks, steps, r and seed, blocks of 5 steps.
started = time.perf_counter()
with cpu.autocast():
    jumped = inpaint_jump(
        model, scheduler, originals, masks, steps, resample, 5, torch.Generator().manual_seed(0)
    )
print(f"{len(jumped)} digits inpainted with jump = 5 in {time.perf_counter() - started:.0f} s")
jump_correct = (torch.from_numpy(classify(classifier, jumped)[1].argmax(1)) == true_labels).float()
jump_values = {"mse": masked_error(jumped, originals, masks), "correct": jump_correct}
for key, reference in (("mse", per_image_mse[REPAINT]), ("correct", per_image_correct[REPAINT])):
    difference = jump_values[key] - reference
    print(
        f"jump = 5 minus jump = 1, {key}: {difference.mean():+.3f} ± {difference.std() / len(difference) ** 0.5:.3f}"
    )
### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 12.3
x0, right = heldout_images[[50, 150]], make_mask("right")
ours = inpaint_jump(model, scheduler, x0, right, 6, 2, 1, torch.Generator().manual_seed(6))
theirs = inpaint(model, scheduler, x0, right, 6, 2, torch.Generator().manual_seed(6))
assert torch.allclose(ours, theirs, atol=1e-5)
counted = CountCalls(model)
jumped = inpaint_jump(counted, scheduler, x0, right, 10, 2, 3, torch.Generator().manual_seed(7))
print(f"10 steps, r = 2, jump = 3: {counted.calls} network calls")
assert counted.calls == 9 * 3 + 1  # blocks of 3, 3 and 3 noisy steps, 3 times each; then the last step
assert torch.equal(jumped * right, x0 * right)
### BEGIN HIDDEN TESTS
counted = CountCalls(model)
inpaint_jump(counted, scheduler, x0, right, 5, 1, 10, torch.Generator().manual_seed(8))
assert counted.calls == 4 * 2 + 1
### END HIDDEN TESTS
print("Exercise 12.3 passed")

# %% [markdown]
# **Your answer (12.3, 1 point, graded by hand).** How many network calls does it make, and how does that depend on
# `jump`? How does `jump=5` compare with section 6's RePaint row?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# **Calls.** Every step but the last runs 1 + r times, whatever the blocks are, so the cost is
# S + r (S − 1) network calls for every `jump`, the same as `inpaint`: a longer jump back costs nothing
# extra. It changes *what* is repeated: the model revisits a stretch of `jump` noise levels together, so a
# shape that went wrong early in the stretch can be undone, which one-step resampling cannot do.
#
# **Measurement.** In the full profile (300 digit-mask pairs, the shipped v weights), jump = 5 minus
# jump = 1 is +0.008 ± 0.014 in masked MSE and +0.050 ± 0.028 in accuracy: both within about two standard errors
# of zero, so on these digits longer jumps neither help nor hurt measurably, at the same number of network calls.
# The paper's jumps of 10 steps (each stretch resampled 10 times) were chosen on 256 × 256 faces and ImageNet
# images, where a one-step jump back leaves the model little room to change a region that is already half drawn;
# a 28 × 28 digit has little such structure, and one-step resampling already lets its halves agree (section 6:
# RePaint against replacement).
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: S + r (S − 1) calls for every `jump`, as in `inpaint`: a longer jump back costs nothing extra, it
#   changes what is repeated; and the measured differences read with their standard errors (within chance here).
# - **½ point**: the count right and the measurement read without its uncertainty, or the measurement right and a
#   count that misses what `jump` changes.
# - **0**: a count that grows with `jump`, and no reading of the measurement.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
