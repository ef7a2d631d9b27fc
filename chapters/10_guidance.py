# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · Class-conditional generation and classifier-free guidance
#
# So far the sampler decides which digit it draws. This chapter asks for one: a class-conditional model
# $\varepsilon_\theta(x_t, t, y)$ (chapter 04, section 12) draws digits of the label $y$, and *classifier-free
# guidance* (Ho & Salimans, 2022) trades diversity for digits that look more like their class, with one number.
#
# **After this chapter you can**
#
# - train a class-conditional DDPM whose labels are dropped at random, so that one network learns both the
#   conditional $\varepsilon_\theta(x_t, t, y)$ and the unconditional $\varepsilon_\theta(x_t, t, \varnothing)$;
# - derive the guided prediction $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(x_t, t, y) - w\,\varepsilon_\theta(x_t, t, \varnothing)$
#   from Bayes' rule, and implement it as a denoiser that every sampler accepts;
# - draw a grid with one row per digit for several guidance scales $w$;
# - measure, with chapter 07's classifier, how often a sample is the digit that was asked for, and what guidance
#   costs in diversity;
# - sample from the command line: `python -m ddpm_lib sample --label 7 --guidance 2`.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib.data import load_mnist
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.generation import generate
from ddpm_lib.metrics import baseline_images, classify, features_distance
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.pretrained import load_classifier, load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import sample_loop
from ddpm_lib.training import ddpm_loss
from ddpm_lib.unet import Conditioned

torch.manual_seed(0)
model, scheduler, provenance = load_pretrained("ddpm_mnist_cond")
model.requires_grad_(False)
classifier, _ = load_classifier()
heldout_images, heldout_labels = load_mnist("heldout", verbose=False).tensors
print(f"profile: {PROFILE.name}; class-conditional denoiser: {provenance['summary']}")
print(f"trained by: {provenance['command']}")
assert model.config["num_classes"] == 10

# %% [markdown]
# ## 1. One network, two models: label dropout
#
# The shipped model was trained with chapter 05's loop on (digit, label) pairs, `--num-classes 10
# --label-dropout 0.1`: in every batch each label is replaced, with probability 0.1, by "no label" ($y = -1$,
# the extra row of the label embedding). The network therefore learns $\varepsilon_\theta(x_t, t, y)$ from 90%
# of the examples and $\varepsilon_\theta(x_t, t, \varnothing)$ — an ordinary unconditional DDPM — from the other 10%.
#
# `ddpm_loss` draws the dropout after $t$ and $\varepsilon$, from the same generator. A spy network that records
# the labels it is shown confirms the rate:

# %%
seen = []


def spy(x, t, y):
    seen.append(y.clone())
    return torch.zeros_like(x)


labels = torch.arange(4096) % 10
ddpm_loss(spy, scheduler, torch.zeros((4096, 1, 28, 28)), torch.Generator().manual_seed(0),
          labels=labels, label_dropout=0.1)  # fmt: skip
shown = seen[0]
dropped = (shown == -1).float().mean().item()
print(f"labels replaced by 'no label': {dropped:.3f} (asked for 0.1); the others unchanged: "
      f"{bool((shown[shown >= 0] == labels[shown >= 0]).all())}")  # fmt: skip
assert abs(dropped - 0.1) < 0.015 and (shown[shown >= 0] == labels[shown >= 0]).all()

# %% [markdown]
# ## 2. Guidance from Bayes' rule
#
# The noise prediction is a scaled score: $\varepsilon_\theta(x_t, t) \approx -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_t(x_t)$.
# Bayes' rule splits the conditional score into the unconditional one and a classifier's:
#
# $$ \nabla \log p_t(x_t \mid y) = \nabla \log p_t(x_t) + \nabla \log p_t(y \mid x_t). $$
#
# *Classifier guidance* (Dhariwal & Nichol, 2021) trains a classifier on noisy images and scales its gradient by
# $1 + w$. *Classifier-free* guidance needs no classifier: the difference of our two models **is** the implicit
# classifier's gradient, $\nabla \log p_t(y \mid x_t) \approx -(\varepsilon_\theta(x_t,t,y) - \varepsilon_\theta(x_t,t,\varnothing))/\sqrt{1-\bar\alpha_t}$.
# Scaling that term by $1 + w$:
#
# $$ \tilde\varepsilon = \varepsilon_\theta(x_t, t, \varnothing) + (1 + w)\big(\varepsilon_\theta(x_t, t, y) - \varepsilon_\theta(x_t, t, \varnothing)\big)
#    = (1 + w)\,\varepsilon_\theta(x_t, t, y) - w\,\varepsilon_\theta(x_t, t, \varnothing). $$
#
# $w = 0$ is the conditional model, $w = -1$ the unconditional one, and $w > 0$ samples from a sharpened
# $p(x \mid y)\,p(y \mid x)^{w}$: images the implicit classifier is surer of. The guided denoiser is a
# class-conditional model itself — it takes $(x, t, y)$ — so chapter 04's `Conditioned` and every sampler of
# chapters 06 and 08 use it unchanged. One network call per step evaluates both predictions, as one batch of
# $2B$ images.

# %%
#| default_exp guidance
#| export
import math

import numpy as np
import torch
from torch import nn


class ClassifierFreeGuidance(nn.Module):
    r"""Classifier-free guidance of a class-conditional denoiser (Ho & Salimans, 2022).

    ``forward(x, t, y)`` = (1 + w)·ε(x, t, y) − w·ε(x, t, ∅) with w = ``guidance``, from one call of ``model`` on
    the batch [x; x] with labels [y; −1]. w = 0 is the conditional model (one plain call); w = −1 the
    unconditional one. Wrap it in :class:`ddpm_lib.unet.Conditioned` (or pass ``labels=`` to the samplers'
    ``generate`` functions) to sample.
    """

    def __init__(self, model: nn.Module, guidance: float):
        super().__init__()
        if model.config.get("num_classes") is None:
            raise ValueError("model must be class-conditional (a Unet with num_classes set) to be guided")
        if (
            isinstance(guidance, bool)
            or not isinstance(guidance, (int, float))
            or not math.isfinite(guidance)
        ):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        if guidance < -1:
            raise ValueError(f"guidance must be >= -1 (w = -1 is the unconditional model), got {guidance}")
        self.model, self.guidance = model, float(guidance)
        self.config = model.config

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.guidance == 0 or y is None:
            return self.model(x, t, y)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        y = torch.as_tensor(y, device=x.device)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, -1)]))
        conditional, unconditional = both.chunk(2)
        return (1 + self.guidance) * conditional - self.guidance * unconditional


# %% [markdown]
# The two special cases, and a guided prediction, against the formula:

# %%
x = torch.randn((6, 1, 28, 28), generator=torch.Generator().manual_seed(1))
t, y = torch.full((6,), 600), torch.tensor([0, 1, 2, 3, 4, 5])
with torch.no_grad():
    conditional, unconditional = model(x, t, y), model(x, t)
    for w in (0.0, -1.0, 2.0):
        guided = ClassifierFreeGuidance(model, w)(x, t, y)
        expected = (1 + w) * conditional - w * unconditional
        print(f"w = {w:+.0f}: max |guided - ((1+w) eps_c - w eps_u)| = {(guided - expected).abs().max():.2e}")
        assert torch.allclose(guided, expected, atol=1e-5)
    gap = (conditional - unconditional).abs().mean().item()
print(f"mean |eps(x, t, y) - eps(x, t, no label)| at t = 600: {gap:.4f}")
assert gap > 0

# %% [markdown]
# ## 3. One row per digit
#
# The same starting noise in every column; rows ask for 0, 1, …, 9. Sampler: chapter 06's `sample()` on a
# 100-step respaced chain (chapter 08), which costs 100 (unguided) or 100 double-batch network calls per digit.

# %%
columns = PROFILE.guidance_grid_columns
grid_labels = torch.arange(10).repeat_interleave(columns)
grid_scales = (0.0, 1.0, 4.0)
grids = {}
for w in grid_scales:
    guided = ClassifierFreeGuidance(model, w)
    # the same noise per column: seed the batch, then reuse its first `columns` draws in every row
    noise_seed = torch.Generator().manual_seed(5)
    x_T = torch.randn((columns, 1, 28, 28), generator=noise_seed).repeat(10, 1, 1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        grids[w] = sample_loop(scheduler, Conditioned(guided, grid_labels), x_T, "ddpm", torch.Generator().manual_seed(6),
                               timesteps=timesteps_for(scheduler.num_timesteps, 100)).float().clamp(-1, 1)  # fmt: skip
fig, axes = plt.subplots(10, len(grid_scales) * columns, figsize=(0.75 * len(grid_scales) * columns, 8.2))
for block, w in enumerate(grid_scales):
    for index, image in enumerate(grids[w]):
        row, column = divmod(index, columns)
        ax = axes[row, block * columns + column]
        ax.imshow(to_image(image), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0 and column == 0:
            ax.set_title(f"w = {w:g}", fontsize=9, loc="left")
fig.tight_layout()
save_figure(fig, "10_guidance_grid")
plt.show()

# %%
grid_accuracy = {}
for w, images in grids.items():
    _, probs = classify(classifier, images)
    grid_accuracy[w] = float((probs.argmax(1) == grid_labels.numpy()).mean())
print("share of grid digits the classifier reads as the requested label: "
      + ", ".join(f"w = {w:g}: {a:.0%}" for w, a in grid_accuracy.items()))  # fmt: skip
assert all(g.shape == (10 * columns, 1, 28, 28) for g in grids.values())

# %% [markdown]
# ## 4. Accuracy against diversity
#
# For each guidance scale we draw the same number of digits of every class (same seeds) and measure:
#
# - **accuracy**: the share the evaluation classifier assigns to the requested label;
# - **confident**: the share classified with probability ≥ 0.9 (chapter 07);
# - **diversity**: how spread out each class is, as the mean distance between two samples' classifier features,
#   relative to the same spread for real held-out digits of that class (1.0: as varied as real digits);
# - the **Fréchet distance** to all held-out digits, next to the real-vs-real floor at the same $n$ — it
#   penalises both wrong digits and missing variety.
#
# Guided steps cost two network evaluations per image, so the full profile (256 digits per row, 100 steps)
# samples for a few minutes; the CI profile draws one digit per class.


# %%
#| export
def class_spread(features, labels) -> dict[int, float]:
    """Mean Euclidean distance between two different members of each class, from (N, D) features and (N,) labels."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, D) and labels (N,); got {features.shape} and {labels.shape}")
    spread = {}
    for label in np.unique(labels):
        members = features[labels == label]
        if len(members) < 2:
            continue
        distances = np.sqrt(((members[:, None] - members[None]) ** 2).sum(-1))
        spread[int(label)] = float(distances.sum() / (len(members) * (len(members) - 1)))
    return spread


# %%
n_eval = PROFILE.guidance_eval_samples
eval_labels = torch.arange(n_eval) % 10
scales = list(PROFILE.guidance_scales)
real_features, _ = classify(classifier, heldout_images)
real_spread = class_spread(real_features, heldout_labels.numpy())
floor_features, _ = classify(classifier, baseline_images(n_eval, seed=1)["real digits (floor)"])
floor = features_distance(floor_features, real_features)
table = {}
for w in [-1.0, *scales]:  # w = -1: the unconditional half of the same network
    images = generate(
        model, scheduler, n_eval, sampler="ddpm", steps=100, guidance=w, seed=1, labels=eval_labels
    )
    features, probs = classify(classifier, images)
    spread = class_spread(features, eval_labels.numpy())
    table[w] = {
        "accuracy": float((probs.argmax(1) == eval_labels.numpy()).mean()),
        "confident": float((probs.max(1) >= 0.9).mean()),
        "diversity": float(np.mean([spread[c] / real_spread[c] for c in spread])) if spread else float("nan"),
        "frechet": features_distance(features, real_features),
    }
print(
    f"{n_eval} samples per row (every class equally often), 100-step DDPM; floor (real vs real): {floor:.1f}"
)
print(f"{'w':>6} {'accuracy':>9} {'confident':>10} {'diversity':>10} {'Fréchet':>9}")
for w, row in table.items():
    name = "uncond" if w == -1 else f"{w:g}"
    print(
        f"{name:>6} {row['accuracy']:9.1%} {row['confident']:10.1%} {row['diversity']:10.2f} {row['frechet']:9.1f}"
    )
best_w = max(scales, key=lambda w: table[w]["accuracy"])
print(f"best accuracy at w = {best_w:g}: {table[best_w]['accuracy']:.1%}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(scales, [table[w]["accuracy"] for w in scales], "o-", label="accuracy on the requested label")
ax.plot(scales, [table[w]["diversity"] for w in scales], "s-", label="diversity (1 = real digits)")
ax.axhline(0.95, color="grey", ls=":", lw=1, label="95%")
ax.set_xlabel("guidance scale w")
ax.set_title(f"{n_eval} samples per point", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "10_guidance_tradeoff")
plt.show()
assert all(0 <= table[w]["accuracy"] <= 1 for w in table)
if n_eval >= 100:  # what the text below reads off the table, where the samples are enough to show it
    assert table[best_w]["accuracy"] >= 0.95
    assert table[max(scales)]["diversity"] < table[0.0]["diversity"]  # guidance costs variety
    assert table[0.0]["accuracy"] >= 0.9  # the label alone already decides the digit

# %% [markdown]
# **Reading the table** (full profile, 256 digits per row):
#
# | $w$ | accuracy | confident | diversity | Fréchet (floor 68.9) |
# | --- | --- | --- | --- | --- |
# | unconditional ($w = -1$) | 10.5% | 76.2% | 1.85 | 257.1 |
# | 0 | 96.9% | 98.4% | 1.01 | 52.7 |
# | 0.5 | 99.6% | 99.2% | 0.87 | 73.9 |
# | 1 | 100.0% | 100.0% | 0.78 | 109.0 |
# | 2 | 100.0% | 100.0% | 0.70 | 166.0 |
# | 4 | 100.0% | 100.0% | 0.64 | 218.2 |
#
# (`DDPM_PROFILE=full jupyter nbconvert --to notebook --execute chapters/10_guidance.ipynb`, 11 minutes on two
# CPU cores.)
#
# - **The label alone does most of the work.** Unguided ($w = 0$), 96.9% of the digits are the requested class,
#   and their variety matches real digits of that class (diversity 1.01); the Fréchet distance, 52.7, is even below
#   the floor. The floor is one draw of 256 random real digits (chapter 08's bootstrap interval for it spans
#   97–172), whose class counts are uneven; these samples have exactly 25 or 26 of every class. Read it as "at the
#   floor". The target of 95% is met already at $w = 0$; the best accuracy, 100%, from $w = 1$ on.
# - **Guidance buys the last few percent and costs variety.** From $w = 0$ to $w = 4$ the diversity falls from
#   1.01 to 0.64 and the Fréchet distance quadruples: every class collapses towards its most typical, boldest
#   shapes (compare the rows of the grid above). Above $w = 1$ there is nothing left to gain in accuracy; only
#   variety to lose. A short run is different: its unguided samples are less sure of the label, and chapter 05's
#   quick recipe measured $w = 1$ as its best choice — better on confidence *and* on the Fréchet distance.
# - **The unconditional half is a weaker model.** With no label ($w = -1$), the same network draws digits of its
#   own choosing — so "accuracy" is chance, 10.5%, and the within-label spread is that of all classes mixed (1.85) —
#   and only 76.2% are confident, against 87% for the shipped unconditional model trained for longer on every
#   image: it learned that task from a tenth of the batches.
#
# ## 5. From the command line
#
# ```bash
# python -m ddpm_lib sample --label 7 --guidance 2 --out sevens.png      # 16 sevens, guided (w = 2)
# python -m ddpm_lib sample --label 3 --sampler ddim --steps 50          # any sampler; unguided by default
# python -m ddpm_lib evaluate --weights ddpm_mnist_cond --guidance 1 --n 500   # every digit equally often
# python -m ddpm_lib train --num-classes 10 --label-dropout 0.1 ...      # train your own
# ```
#
# `--label` and `--guidance` need a class-conditional model; without `--checkpoint` they use the shipped one.
#
# ## Summary
#
# - A class-conditional U-Net adds a label embedding to the time embedding; replacing 10% of the labels by a
#   "no label" token during training makes the same network an unconditional model too.
# - Classifier-free guidance: $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(x_t, t, y) - w\,\varepsilon_\theta(x_t, t, \varnothing)$,
#   Bayes' rule with the implicit classifier's gradient scaled by $1 + w$. $w = 0$: conditional; $w = -1$:
#   unconditional; $w > 0$: sharper, less varied classes.
# - The guided denoiser takes $(x, t, y)$ like the model itself, so `Conditioned` and every sampler use it; a
#   guided step costs two network evaluations (one double batch).
# - Measured on the shipped conditional model: the accuracy on the requested label rises from 96.9% ($w = 0$) to
#   100% ($w \ge 1$) while the within-class variety falls from that of real digits to two thirds of it ($w = 4$) —
#   guidance is a dial between the two.
#
# ## Exercises
#
# :::{exercise} 10.1 · ★☆☆ · The guided prediction
# :nonumber:
#
# Write `guided_epsilon(eps_conditional, eps_unconditional, w)`: the classifier-free guidance combination of two
# noise predictions. The check compares it with `ClassifierFreeGuidance`.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
def guided_epsilon(eps_conditional: torch.Tensor, eps_unconditional: torch.Tensor, w: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    return (1 + w) * eps_conditional - w * eps_unconditional
    ### END SOLUTION


# %%
# Check 10.1
with torch.no_grad():
    for w in (0.5, 3.0):
        assert torch.allclose(guided_epsilon(conditional, unconditional, w),
                              ClassifierFreeGuidance(model, w)(x, t, y), atol=1e-5)  # fmt: skip
### BEGIN HIDDEN TESTS
assert torch.equal(guided_epsilon(torch.ones(2), torch.zeros(2), 2.0), torch.full((2,), 3.0))
### END HIDDEN TESTS
print("Exercise 10.1 passed")

# %% [markdown]
# :::{exercise} 10.2 · ★★☆ · Label dropout by hand
# :nonumber:
#
# Write `drop_labels(labels, p, generator)`: a copy of the integer tensor `labels` in which each entry is
# replaced by −1 with probability `p`, using `torch.rand(..., generator=generator)`. Why must the dropout be
# random per example rather than, say, every tenth batch without labels? (Hint: BatchNorm is not the reason —
# think of what the optimiser sees in one step.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    ### BEGIN SOLUTION
    dropped = torch.rand(labels.shape, generator=generator) < p
    return torch.where(dropped, torch.full_like(labels, -1), labels)
    ### END SOLUTION


# %%
# Check 10.2
original = torch.arange(10_000) % 10
out = drop_labels(original, 0.2, torch.Generator().manual_seed(0))
assert out is not original and torch.equal(original, torch.arange(10_000) % 10)
assert abs((out == -1).float().mean().item() - 0.2) < 0.02
assert torch.equal(out[out >= 0], original[out >= 0])
### BEGIN HIDDEN TESTS
assert (drop_labels(original, 0.0, torch.Generator().manual_seed(1)) == original).all()
assert (drop_labels(original, 1.0, torch.Generator().manual_seed(1)) == -1).all()
### END HIDDEN TESTS
print("Exercise 10.2 passed")

# %% [markdown]
# :::{exercise} 10.3 · ★★★ · Guidance in a limited interval
# :nonumber:
#
# Kynkäänniemi et al. (2024) apply guidance only at middle noise levels: at high noise it mostly pushes every
# sample towards the same prototype (losing variety), at low noise it does little. Write a class
# `IntervalGuidance(model, w, t_low, t_high)` (an `nn.Module` with `forward(x, t, y)`, like
# `ClassifierFreeGuidance`) that guides with scale `w` when $t_{\text{low}} \le t \le t_{\text{high}}$ and returns
# the plain conditional prediction otherwise. Then measure accuracy and diversity for $w = 4$ with
# $[t_{\text{low}}, t_{\text{high}}] = [100, 600]$ against full guidance.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"}
class IntervalGuidance(torch.nn.Module):
    def __init__(self, model, w: float, t_low: int, t_high: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.guided, self.model = ClassifierFreeGuidance(model, w), model
        self.t_low, self.t_high = t_low, t_high
        ### END SOLUTION

    def forward(self, x, t, y):
        ### BEGIN SOLUTION
        step = int(torch.as_tensor(t).reshape(-1)[0])
        inside = self.t_low <= step <= self.t_high
        return self.guided(x, t, y) if inside else self.model(x, t, y)
        ### END SOLUTION


# %%
# Check 10.3
interval = IntervalGuidance(model, 4.0, 100, 600)
with torch.no_grad():
    assert torch.allclose(
        interval(x, t, y), ClassifierFreeGuidance(model, 4.0)(x, t, y), atol=1e-5
    )  # t = 600
    late = torch.full((6,), 50)
    assert torch.allclose(interval(x, late, y), model(x, late, y), atol=1e-6)
### BEGIN HIDDEN TESTS
with torch.no_grad():
    early = torch.full((6,), 900)
    assert torch.allclose(interval(x, early, y), model(x, early, y), atol=1e-6)
### END HIDDEN TESTS
print("Exercise 10.3 passed")
