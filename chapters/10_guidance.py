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
# # 10 · Class-conditional generation and classifier-free guidance
#
# So far the sampler decides which digit it draws. This chapter asks for one: a class-conditional model
# $\varepsilon_\theta(x_t, t, y)$ ([chapter 04](04_unet.py), section 12) draws digits of the label $y$, and *classifier-free
# guidance* {cite:p}`ho2022cfg` trades diversity for digits that look more like their class, with one number.
# Symbols are those of the [notation](../notation.md) page, which also relates our guidance scale $w$ to the
# `guidance_scale` of other libraries.
#
# **After this chapter you can**
#
# - train a class-conditional DDPM whose labels are dropped at random, so that one network learns both the
#   conditional $\varepsilon_\theta(x_t, t, y)$ and the unconditional $\varepsilon_\theta(x_t, t, \varnothing)$;
# - motivate the guided prediction $\tilde\varepsilon = (1 + w)\,\varepsilon_\theta(x_t, t, y) - w\,\varepsilon_\theta(x_t, t, \varnothing)$
#   with Bayes' rule, say where that argument stops being exact, and implement it as a denoiser that every
#   sampler accepts;
# - draw a grid with one row per digit for several guidance scales $w$;
# - measure, with [chapter 07](07_evaluation.py)'s classifier, how often a sample is the digit that was asked for, and what guidance
#   costs in diversity;
# - guide an unconditional model without labels, away from an earlier snapshot of itself (*autoguidance*), and
#   measure what it does to the shipped `ddpm_mnist`;
# - sample from the command line: `python -m ddpm_lib sample --label 7 --guidance 2`.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from ddpm_lib.checkpoint import load_denoiser
from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import prediction_of, q_sample
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.generation import generate
from ddpm_lib.metrics import baseline_images, class_statistics, classify, features_distance
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.precision import choose
from ddpm_lib.pretrained import load_classifier, load_pretrained, snapshot_paths
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import predict_x0, sample_loop
from ddpm_lib.training import ddpm_loss
from ddpm_lib.unet import Conditioned

torch.manual_seed(0)
# this chapter's own chains run on the CPU, in the precision it computes fast in (chapter 04, section 11);
# generate() picks the fastest device this machine has by itself
cpu = choose("cpu")
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
# The shipped model was trained with [chapter 05](05_training.py)'s loop on (digit, label) pairs, `--num-classes 10
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
# [Chapter 03](03_theory.py) showed that the noise prediction is a scaled *score*
# {cite:p}`song2019ncsn,song2021sde`: $\varepsilon_\theta(x_t, t) \approx -\sqrt{1-\bar\alpha_t}\,\nabla_{x_t}\log p_t(x_t)$, with
# $p_t$ the distribution of the noisy images $x_t$. Bayes' rule splits the conditional score into the unconditional one
# and a classifier's:
#
# $$ \nabla \log p_t(x_t \mid y) = \nabla \log p_t(x_t) + \nabla \log p_t(y \mid x_t). $$
#
# *Classifier guidance* {cite:p}`dhariwal2021beat` trains a classifier on noisy images and scales its gradient by
# $1 + w$. *Classifier-free* guidance needs no classifier: the difference of our two models **is** the implicit
# classifier's gradient, $\nabla \log p_t(y \mid x_t) \approx -(\varepsilon_\theta(x_t,t,y) - \varepsilon_\theta(x_t,t,\varnothing))/\sqrt{1-\bar\alpha_t}$.
# Scaling that term by $1 + w$:
#
# $$ \tilde\varepsilon = \varepsilon_\theta(x_t, t, \varnothing) + (1 + w)\big(\varepsilon_\theta(x_t, t, y) - \varepsilon_\theta(x_t, t, \varnothing)\big)
#    = (1 + w)\,\varepsilon_\theta(x_t, t, y) - w\,\varepsilon_\theta(x_t, t, \varnothing). $$
#
# $w = 0$ is the conditional model and $w = -1$ the unconditional one. For $w > 0$, $\tilde\varepsilon$ is the score of
# a sharpened distribution $\propto p_t(x_t \mid y)\,p_t(y \mid x_t)^{w}$ *at each noise level on its own*: noisy
# images the implicit classifier is surer of. That is the motivation, not a derivation of what the sampler draws.
# The products at the different noise levels are not the noised versions of one clean distribution (noising
# $p(x_0 \mid y)\,p(y \mid x_0)^w$ does not give $p_t(x_t \mid y)\,p_t(y \mid x_t)^w$), so the guided scores are not the
# scores of any single diffusion process, and a sampler that follows them does not sample
# $p(x_0 \mid y)\,p(y \mid x_0)^w$ — or any other distribution we can name. Guidance is a heuristic that works;
# section 4 measures what it does.
#
# The guided denoiser is a class-conditional model itself — it takes $(x, t, y)$ — so [chapter 04](04_unet.py)'s `Conditioned` and
# every sampler of chapters [06](06_sampling.py) and [08](08_fast_sampling.py) use it unchanged. One network call per step evaluates both predictions, as
# one batch of $2B$ images.

# %%
#| default_exp guidance
#| export
import math

import numpy as np
import torch
from torch import nn

from ddpm_lib.diffusion import prediction_of


def guidance_weight(guidance: float, at_minus_one: str) -> float:
    """A guidance weight w, checked: a finite number >= -1 (w = -1 is ``at_minus_one``, the model guided from)."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
    if guidance < -1:
        raise ValueError(f"guidance must be >= -1 (w = -1 is {at_minus_one}), got {guidance}")
    return float(guidance)


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
        self.model, self.guidance = model, guidance_weight(guidance, "the unconditional model")
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
# The same starting noise in every column; rows ask for 0, 1, …, 9. Sampler: [chapter 06](06_sampling.py)'s `sample()` on a
# respaced chain ([chapter 08](08_fast_sampling.py)) of `PROFILE.guidance_steps` = 100 steps, which costs 100 (unguided) or 100
# double-batch network calls per digit. In the full profile the next cell takes about half a minute on a 2-core
# CPU (three grids of 60 digits); a progress bar follows each chain.

# %%
columns, guidance_steps = PROFILE.guidance_grid_columns, PROFILE.guidance_steps
grid_labels = torch.arange(10).repeat_interleave(columns)
grid_scales = (0.0, 1.0, 4.0)
grids = {}
start = time.perf_counter()
for w in grid_scales:
    guided = ClassifierFreeGuidance(model, w)
    # the same noise per column: seed the batch, then reuse its first `columns` draws in every row
    noise_seed = torch.Generator().manual_seed(5)
    x_T = torch.randn((columns, 1, 28, 28), generator=noise_seed).repeat(10, 1, 1, 1)
    with torch.no_grad(), cpu.autocast():
        grids[w] = sample_loop(Conditioned(guided, grid_labels), scheduler, x_T,
                               timesteps_for(scheduler.num_timesteps, guidance_steps), clip=False,
                               generator=torch.Generator().manual_seed(6), progress=PROFILE.progress,
                               ).float().clamp(-1, 1)  # fmt: skip
print(f"{len(grid_scales)} grids of {len(grid_labels)} digits in {time.perf_counter() - start:.0f} s")
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
# - **confident**: the share classified with probability ≥ 0.9 ([chapter 07](07_evaluation.py));
# - **diversity**: how spread out each class is, as the mean distance between two samples' classifier features,
#   relative to the same spread for real held-out digits of that class (1.0: as varied as real digits);
# - the **Fréchet distance** to all held-out digits, next to the real-vs-real floor at the same $n$ — it
#   penalises both wrong digits and missing variety.
#
# Guided steps cost two network evaluations per image, so this table is the slow part of the chapter: at full
# size (256 digits per row, 100 steps) the next two cells take about six minutes on a 2-core CPU, with a
# progress bar over the rows.


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
start = time.perf_counter()
for w in tqdm([-1.0, *scales], desc="guidance scales", disable=not PROFILE.progress):  # w = -1: unconditional
    images = generate(
        model, scheduler, n_eval, sampler="ddpm", steps=guidance_steps, guidance=w, seed=1, labels=eval_labels
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
    f"{n_eval} samples per row (every class equally often), {guidance_steps}-step DDPM; floor (real vs real): {floor:.1f}"
)
print(f"{len(table)} rows sampled and scored in {time.perf_counter() - start:.0f} s")
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
# **Reading the table.** The shipped `ddpm_mnist_cond` (8,000 steps), 256 digits per row, 100-step DDPM; the
# numbers below are the ones the table prints in the full profile (about nine minutes for the chapter on two CPU
# cores).
#
# - **The label alone does most of the work.** Unguided ($w = 0$), 97.3% of the digits are the requested class,
#   and their variety matches real digits of that class (diversity 1.01); the Fréchet distance, 52.7, is even
#   below the floor's 68.9. That difference is within chance: at 256 digits a Fréchet distance moves by a standard
#   deviation of about 10 from one draw to the next ([chapter 08](08_fast_sampling.py)), and these samples hold exactly 25 or 26 digits of
#   every class, where the floor's random real digits do not. Read it as "at the floor". The target of 95% is met
#   already at $w = 0$; the best accuracy, 100%, from $w = 1$ on.
# - **Guidance buys the last few percent and costs variety.** From $w = 0$ to $w = 4$ the diversity falls from
#   1.01 to 0.64 and the Fréchet distance quadruples, from 52.7 to 218.4: every class collapses towards its most
#   typical, boldest shapes (compare the rows of the grid above). Above $w = 1$ there is nothing left to gain in
#   accuracy, only variety to lose. For this model the best setting by the Fréchet distance is no guidance at
#   all, and $w = 0.5$ if nearly every digit must be the right one. A short training run is less sure of its
#   labels, so guidance buys more there: [chapter 11](11_putting_together.py)'s quick recipe samples with $w = 1$, and on its short
#   run guidance raises the confident share and lowers the Fréchet distance alike (exercise 11.3 prints both).
# - **The unconditional half is a weaker model.** With no label ($w = -1$), the same network draws digits of its
#   own choosing — so "accuracy" is chance, 10.5%, and the within-label spread is that of all classes mixed
#   (1.85) — and only 75.4% are confident, against 92.2% for the shipped unconditional model `ddpm_mnist`, trained
#   longer on every image (its provenance file `ddpm_lib/weights/ddpm_mnist.json`, with 1000-step `sample_clip()`
#   on 500 digits: a different sampler, so compare loosely). The conditional network learned that task from a
#   tenth of its training examples: label dropout replaces each example's label by "no label" with probability
#   0.1.

# %% [markdown]
# ## 5. Guidance without labels: autoguidance
#
# Classifier-free guidance steers away from the model's *unconditional* prediction, so it needs labels. An
# unconditional model such as the shipped `ddpm_mnist` has nothing to drop — but it can be steered away from
# something else: a *weaker version of itself* {cite:p}`karras2024autoguidance`. With $D_\theta$ the network's
# prediction and $D_{\theta'}$ that of the same network earlier in its training,
#
# $$\tilde D(x_t, t) = (1 + w)\,D_\theta(x_t, t) - w\,D_{\theta'}(x_t, t),$$
#
# the same extrapolation as in section 2 with the unconditional model replaced by the weak one. The argument is
# different: both networks make the same *kind* of error (too little certainty where the data is hard), the weak
# one more of it, so the difference of their predictions points away from their shared error, and following it
# further ($w > 0$) sharpens what the good model has learned without asking for any label. Karras et al. find the
# weak model works best both smaller and trained for less; here it is simply an earlier snapshot of the same run,
# which costs nothing to keep (the shipped run's EMA weights at 4,000 of its 36,000 steps, in
# `ddpm_lib/weights/ddpm_mnist_steps/`).
#
# Both networks must predict the same target on the same schedule: then the combination is the same whether it
# is taken on $\varepsilon$, $v$ or $x_0$, since each is an affine function of the network's output at fixed
# $x_t$ and $t$ ([chapter 05](05_training.py)), with coefficients that sum to one. A step costs two network calls — two different
# networks, so the double-batch trick of classifier-free guidance does not apply.
#
# Guidance need not act at every step. {cite:t}`kynkaanniemi2024interval` found that it does harm at the
# highest noise levels, where a sample decides what it will become: extrapolating there pushes many samples
# towards the same few shapes, and variety is lost. At the lowest noise levels the image is all but settled. So
# `AutoGuidance` takes an `interval` $(t_{\text{lo}}, t_{\text{hi}})$: inside it the step is guided, outside
# it the good model acts alone, and the weak model is not called. (Exercise 10.3 builds the same for
# classifier-free guidance.)


# %%
#| export
class AutoGuidance(nn.Module):
    r"""Autoguidance (Karras et al., 2024): a denoiser guided away from a weaker version of itself.

    ``forward(x, t[, y])`` = (1 + w)·D(x, t) − w·D_weak(x, t) with w = ``guidance``, where D is ``model`` and
    D_weak is ``weak`` (e.g. an earlier snapshot of the same run). Both must predict the same target (ε, v or
    x₀). w = 0 is ``model`` (one call), w = −1 the weak model. Works for unconditional and class-conditional
    models alike (the label is passed to both); every sampler accepts it. ``interval`` = (lo, hi) guides only
    the steps with lo <= t <= hi and leaves the others to ``model`` alone (Kynkäänniemi et al., 2024); None:
    every step.
    """

    def __init__(
        self, model: nn.Module, weak: nn.Module, guidance: float, interval: tuple[int, int] | None = None
    ):
        super().__init__()
        guidance = guidance_weight(guidance, "the weak model")
        self.interval = guidance_interval(interval)
        if prediction_of(model) != prediction_of(weak):
            raise ValueError(
                f"weak must predict the same target as model: model predicts {prediction_of(model)!r}, "
                f"weak {prediction_of(weak)!r}"
            )
        classes = [getattr(m, "config", {}).get("num_classes") for m in (model, weak)]
        if classes[0] != classes[1]:
            raise ValueError(
                f"weak must take the same labels as model: num_classes {classes[0]} and {classes[1]}"
            )
        self.model, self.weak, self.guidance = model, weak, guidance
        self.config = getattr(model, "config", {})

    def forward(self, x: torch.Tensor, t, *label) -> torch.Tensor:
        good = self.model(x, t, *label)
        inside = in_interval(t, self.interval, len(x), x.device)
        if self.guidance == 0 or not inside.any():
            return good
        guided = (1 + self.guidance) * good - self.guidance * self.weak(x, t, *label)
        return guided if inside.all() else torch.where(inside.view(-1, 1, 1, 1), guided, good)


def guidance_interval(interval) -> tuple[int, int] | None:
    """An interval of timesteps to guide in, checked: None (every step) or (lo, hi), integers with 0 <= lo <= hi."""
    if interval is None:
        return None
    if (
        not isinstance(interval, (tuple, list))
        or len(interval) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in interval)
        or not 0 <= interval[0] <= interval[1]
    ):
        raise ValueError(f"interval must be None or (lo, hi), integers with 0 <= lo <= hi; got {interval!r}")
    return (interval[0], interval[1])


def in_interval(t, interval: tuple[int, int] | None, batch: int, device) -> torch.Tensor:
    """(batch,) booleans: which timesteps ``t`` (a number or one per image) lie in ``interval`` (None: all)."""
    t = torch.as_tensor(t, device=device)
    t = t.expand(batch) if t.dim() == 0 else t
    if interval is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return (t >= interval[0]) & (t <= interval[1])


# %% [markdown]
# The shipped unconditional model and its step-4,000 snapshot, and the formula checked on one batch:

# %%
unconditional, uncond_scheduler, uncond_provenance = load_pretrained("ddpm_mnist")
weak_step, weak_path = snapshot_paths("ddpm_mnist")[0]
weak, _, _ = load_denoiser(weak_path)
unconditional.requires_grad_(False)
weak.requires_grad_(False)
print(f"good: ddpm_mnist, {uncond_provenance['steps']:,} steps; weak: its EMA snapshot at step {weak_step:,}")
with torch.no_grad():
    good_out, weak_out = unconditional(x, t), weak(x, t)
    for w in (0.0, -1.0, 1.0):
        guided = AutoGuidance(unconditional, weak, w)(x, t)
        expected = (1 + w) * good_out - w * weak_out
        print(f"w = {w:+.0f}: max |guided - ((1+w) D - w D_weak)| = {(guided - expected).abs().max():.2e}")
        assert torch.allclose(guided, expected, atol=1e-5)
assert prediction_of(AutoGuidance(unconditional, weak, 1.0)) == prediction_of(unconditional) == "v"

# %% [markdown]
# Now the same measurement as section 4, for the unconditional model: the weak snapshot alone, the shipped model
# unguided, autoguided at $w = 1$ and $w = 2$, and at $w = 2$ on the interval $200 \le t \le 900$ only, each
# drawing the same `n_eval` digits with the same seeds on a 25-step DDPM chain ([chapter 08](08_fast_sampling.py)). With no label to ask for, the columns are [chapter 07](07_evaluation.py)'s: the confident share,
# the rarest and commonest class against its uniform share, and the Fréchet distance against the floor. In the
# full profile (256 digits per row) the next cell takes about a minute on a 2-core laptop.

# %%
auto_steps = 25
auto_rows = {
    f"weak: step {weak_step:,} alone": weak,
    "ddpm_mnist, unguided": unconditional,
    "autoguided, w = 1": AutoGuidance(unconditional, weak, 1.0),
    "autoguided, w = 2": AutoGuidance(unconditional, weak, 2.0),
    "w = 2, 200 ≤ t ≤ 900": AutoGuidance(unconditional, weak, 2.0, interval=(200, 900)),
}
auto_table = {}
start = time.perf_counter()
for name, denoiser in tqdm(auto_rows.items(), desc="rows", disable=not PROFILE.progress):
    images = generate(denoiser, uncond_scheduler, n_eval, sampler="ddpm", steps=auto_steps, seed=1)
    features, probs = classify(classifier, images)
    stats = class_statistics(probs)
    auto_table[name] = {**stats, "frechet": features_distance(features, real_features), "images": images}
print(f"{n_eval} samples per row, {auto_steps}-step DDPM, seed 1; floor (real vs real): {floor:.1f}; "
      f"{time.perf_counter() - start:.0f} s")  # fmt: skip
print(f"{'':<24} {'confident':>10} {'min/max class':>14} {'Fréchet':>9} {'/ floor':>8}")
for name, row in auto_table.items():
    print(f"{name:<24} {row['confident_share']:10.1%} {row['min_class_ratio']:6.2f}/{row['max_class_ratio']:<6.2f} "
          f"{row['frechet']:9.1f} {row['frechet'] / floor:8.2f}")  # fmt: skip
unguided, autoguided = auto_table["ddpm_mnist, unguided"], auto_table["autoguided, w = 1"]
if n_eval >= 100:  # what the text below reads off the table, where the samples are enough to show it
    assert autoguided["confident_share"] > unguided["confident_share"]
    assert auto_table[f"weak: step {weak_step:,} alone"]["confident_share"] < unguided["confident_share"]

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
for ax, name in zip(axes, ("ddpm_mnist, unguided", "autoguided, w = 1"), strict=True):
    images = auto_table[name]["images"][:36]
    ax.imshow(to_image(make_grid(images, nrow=6, padding=1, pad_value=-1)[:1]), cmap="gray")
    ax.set_title(f"{name}: {auto_table[name]['confident_share']:.0%} confident", fontsize=9)
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "10_autoguidance")
plt.show()

# %% [markdown]
# **Reading the table.** The full profile's numbers (256 digits per row, 25-step DDPM, seed 1):
#
# - **The weak model is much weaker.** At 4,000 of the run's 36,000 steps the snapshot alone draws 78.9%
#   confident digits at 3.31× the floor, against 91.4% and 1.00× for the shipped weights.
# - **Guiding away from it points the right way at $w = 1$:** 94.9% confident and 0.92× the floor, from the same
#   starting noise. At 256 digits a share near 93% has a standard error of about 1.6 points, and the difference
#   of two such shares one of about 2.2 (√2 × 1.6), so the gain of three and a half points is about one and a half
#   of them: suggestive, not shown to be real at these sizes; the Fréchet ratios differ by less than a
#   draw-to-draw deviation (section 4) and read as "no worse".
# - **Further, it trades variety as classifier-free guidance does:** at $w = 2$ the confident share barely moves
#   (96.9%) while the Fréchet distance rises past the floor (1.07×) and the commonest class grows (1.33× its
#   share). $w = 1$ is the setting to use.
# - **On an interval, the trade shrinks.** $w = 2$ applied only on $200 \le t \le 900$ draws 97.3% confident
#   digits at 0.95× the floor, the rarest class at 0.74× its share: the confident share of $w = 2$ at every step
#   and a distance within a draw-to-draw deviation of $w = 1$'s 0.92×, where $w = 2$ at every step reached 1.07×. On
#   the long-trained model the interval adds little to $w = 1$; on a short run, which needs a larger $w$, it is
#   what keeps every digit in the sample ([chapter 11](11_putting_together.py)'s unconditional quick recipe guides with $w = 4$ on
#   $200 \le t \le 850$).
#
# Nothing was retrained: the snapshot was kept along the way, and the price is a second network call per step.
# The same trick lifts a short run more than the long one — a run that keeps a snapshot at a quarter of its steps
# ([chapter 11](11_putting_together.py)'s `--preset quick-unconditional` does, guiding with $w = 4$ on $200 \le t \le 850$) can be guided
# by it.
#
# ## 6. From the command line
#
# ```bash
# python -m ddpm_lib sample --label 7 --guidance 2 --out sevens.png      # 16 sevens, guided (w = 2)
# python -m ddpm_lib sample --label 3 --sampler ddim --steps 50          # any sampler; unguided by default
# python -m ddpm_lib evaluate --weights ddpm_mnist_cond --guidance 1 --n 500   # every digit equally often
# python -m ddpm_lib train --num-classes 10 --label-dropout 0.1 ...      # train your own
# python -m ddpm_lib sample --weights ddpm_mnist --weak ddpm_mnist@8000 --autoguidance 0.5 --sampler ddpm --steps 100
# python -m ddpm_lib evaluate --weights ddpm_mnist --autoguidance 2 --guidance-interval 200:900 --weak ddpm_mnist@4000
# python -m ddpm_lib sample --weights ddpm_mnist       # its sampling recipe: 25-step DDPM, autoguided (w = 1)
# python -m ddpm_lib evaluate --weights ddpm_mnist --n 500                 # the same, scored on 500 digits
# ```
#
# `--label` and `--guidance` need a class-conditional model; without `--checkpoint` they use the shipped one.
# `--weak` takes shipped weights, `NAME@STEP` for one of the snapshots their run kept, or a checkpoint file of
# your own run (`runs/…/checkpoints/step_000875.pt`), `--autoguidance` its weight $w$ (default 1) and
# `--guidance-interval LO:HI` the steps it guides (default: all).
# Shipped weights can come with a *sampling recipe*, a file beside them that says how they sample best:
# `ddpm_lib/weights/ddpm_mnist.sampling.json` asks for section 5's setting — 25-step DDPM guided away from the
# step-4,000 snapshot with $w = 1$ — and records what `evaluate` measured with it. The command line follows it
# when you give none of `--sampler`, `--steps`, `--weak` and `--autoguidance`, and says so; give any of them and
# the sampling is yours (`--sampler clip` alone is the plain model, all 1,000 steps).
# The book's [Try it](../try_it.md) page does the same in your browser: pick a digit and $w$, and watch the
# sixteen samples form.
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
# - Guidance is a heuristic: for $w > 0$ the guided scores are not the scores of any one diffusion process, and
#   the sampler does not draw from $p(x_0 \mid y)\,p(y \mid x_0)^w$.
# - Autoguidance, $(1 + w)\,D_\theta - w\,D_{\theta'}$ with $D_{\theta'}$ an earlier snapshot of the same run,
#   guides a model that has no labels; it costs two network calls per step, of two networks.
# - Measured on the shipped conditional model: the accuracy on the requested label rises from 97.3% ($w = 0$) to
#   100% ($w \ge 1$) while the within-class variety falls from that of real digits to two thirds of it ($w = 4$) —
#   guidance is a dial between the two.
#
# ## Exercises
#
# :::{exercise} 10.1 · ★☆☆ · When does the label matter?
# :nonumber:
#
# Guidance scales the difference between the conditional and the unconditional prediction. How large is that
# difference, and at which noise levels? Write `label_effect(model, x0, labels, t, noise)`: noise the digits `x0`
# to timestep `t` (an int) with `q_sample(scheduler, x0, t, noise)`, and return two floats: the mean absolute
# difference between $\varepsilon_\theta(x_t, t, y)$ (their own labels) and $\varepsilon_\theta(x_t, t, \varnothing)$, and the
# same for the clean images $\hat x_0$ the two predictions imply. The check prints both for $t$ from 0 to 999. Where
# does the label change the noise prediction most, and where the predicted digit? Why do the two disagree near
# $t = T-1$, and what does that say about the noise levels at which guidance decides the digit?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def label_effect(
    model, x0: torch.Tensor, labels: torch.Tensor, t: int, noise: torch.Tensor
) -> tuple[float, float]:
    ### BEGIN SOLUTION
    t_batch = torch.full((len(x0),), t)
    with torch.no_grad():
        x_t = q_sample(scheduler, x0, t_batch, noise)
        gap = (model(x_t, t_batch, labels) - model(x_t, t_batch)).abs().mean().item()
    alpha_bar = scheduler.alpha_bars[t].item()
    return gap, gap * math.sqrt((1 - alpha_bar) / alpha_bar)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 10.1
digits_check, labels_check = heldout_images[:20], heldout_labels[:20]
noise_check = torch.randn(digits_check.shape, generator=torch.Generator().manual_seed(2))
effect = {t: label_effect(model, digits_check, labels_check, t, noise_check) for t in range(0, 1000, 111)}
print("    t   |eps_c - eps_u|   |x0_c - x0_u|")
for t_shown, (gap_eps, gap_x0) in effect.items():
    print(f"{t_shown:5d}   {gap_eps:15.4f}   {gap_x0:13.4f}")
with torch.no_grad():
    t_600 = torch.full((20,), 600)
    x_600 = q_sample(scheduler, digits_check, t_600, noise_check)
    x0_gap = (
        (
            predict_x0(scheduler, 600, model(x_600, t_600, labels_check), x_600)
            - predict_x0(scheduler, 600, model(x_600, t_600), x_600)
        )
        .abs()
        .mean()
        .item()
    )
assert math.isclose(
    label_effect(model, digits_check, labels_check, 600, noise_check)[1], x0_gap, rel_tol=1e-3
)
assert effect[999][0] < effect[444][0] and effect[999][1] > effect[444][1]  # eps and x0 disagree near T-1
### BEGIN HIDDEN TESTS
gap_eps, gap_x0 = label_effect(model, digits_check, labels_check, 300, noise_check)
assert isinstance(gap_eps, float) and isinstance(gap_x0, float) and 0 < gap_eps
assert label_effect(model, digits_check, torch.full((20,), -1), 300, noise_check)[0] == 0  # no label, no gap
### END HIDDEN TESTS
print("Exercise 10.1 passed")

# %% [markdown]
# **Your answer (10.1, 1 point, graded by hand).** Where does the label change the noise prediction most, and where the predicted digit; why do they disagree near T − 1?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# in ε the difference is largest in the middle of the chain (around t = 500 for the shipped
# model) and at t = 0, and smallest near T-1; in x̂0 it grows steadily with t, from almost nothing at t = 0 to
# its largest at T-1. The two differ by the factor √(1 − ᾱ_t)/√ᾱ_t = 1/√SNR_t that turns an ε-difference
# into an x̂0-difference ([chapter 08](08_fast_sampling.py)). At t = 0 that factor is 0.01: the label moves ε̂ a little, but not the
# image, which already shows its digit. Near pure noise the factor is 157: a tiny change in ε̂ is a large
# change in the predicted digit, and there the label decides *which* digit it is. So guidance shapes the
# digit mostly in the noisy half of the chain — the half exercise 10.3 leaves partly unguided.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: ε-differences peak mid-chain and are small near T − 1, x̂₀-differences grow with t; the factor 1/√SNR_t turns one into the other, so near pure noise a tiny ε change decides which digit it is: guidance shapes the digit in the noisy half.
# - **½ point**: the two patterns right without the factor that links them, or the factor without the conclusion for guidance.
# - **0**: restates the printed table.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 10.2 · ★★☆ · Label dropout by hand
# :nonumber:
#
# Write `drop_labels(labels, p, generator)`: a copy of the integer tensor `labels` in which each entry is
# replaced by −1 with probability `p`, using `torch.rand(..., generator=generator)`. Why must the dropout be
# random per example rather than, say, every tenth batch without labels? (Hint: BatchNorm is not the reason —
# think of what the optimiser sees in one step.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def drop_labels(labels: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    ### BEGIN SOLUTION
    dropped = torch.rand(labels.shape, generator=generator) < p
    return torch.where(dropped, torch.full_like(labels, -1), labels)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
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
# **Your answer (10.2, 1 point, graded by hand).** Why must the dropout be random per example rather than every tenth batch without labels?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# one network, one set of weights, two tasks. With the dropout drawn per example, every batch
# holds both tasks in the proportion p : 1 − p, so every gradient step is a step on the combined objective,
# and the optimiser's state (Adam's running moments, the EMA of the weights) always describes that mixture.
# With whole unlabelled batches every tenth step, the optimiser would take nine steps on the conditional task
# and then one large step on the unconditional one alone: the loss oscillates, the moment estimates mix two
# different gradient distributions, and the step the EMA keeps depends on where in the cycle training stops.
# The expected objective is the same; the path to it is much noisier.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: per-example dropout puts both tasks into every batch, so every gradient step (and Adam's moments, the EMA) follows the combined objective; whole unlabelled batches make the optimiser alternate between two tasks, with an oscillating loss and an EMA that depends on where in the cycle training stops.
# - **½ point**: says each batch should contain both tasks, without what goes wrong otherwise.
# - **0**: blames BatchNorm, or says the expected loss differs.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 10.3 · ★★★ · Guidance in a limited interval
# :nonumber:
#
# {cite:t}`kynkaanniemi2024interval` apply guidance only at middle noise levels: at high noise it pushes every
# sample towards the same prototype (losing variety), at low noise it does little (exercise 10.1 measured how
# little). Try it on the shipped model.
#
# 1. Write a class `IntervalGuidance(model, w, t_low, t_high)`, an `nn.Module` with `forward(x, t, y)` like
#    `ClassifierFreeGuidance`, that guides with scale `w` when $t_{\text{low}} \le t \le t_{\text{high}}$ and returns
#    the plain conditional prediction otherwise. Give it the model's `config`, as `ClassifierFreeGuidance` does, so
#    that `generate` accepts it.
# 2. Write `guidance_row(denoiser, n, seed)`: draw `n` digits from `denoiser` exactly as section 4 does (DDPM on
#    `guidance_steps` steps, `labels=torch.arange(n) % 10`) and return section 4's `{"accuracy": ..., "diversity": ...}` for them.
# 3. Measure, with section 4's $n$, the largest scale of its table (`max(scales)`, $w = 4$ at full size) applied on
#    $[t_{\text{low}}, t_{\text{high}}] = [100, 600]$, and compare with that scale applied everywhere and with no
#    guidance. What does the interval keep, and what does it give up?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
class IntervalGuidance(torch.nn.Module):
    def __init__(self, model, w: float, t_low: int, t_high: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.guided, self.model = ClassifierFreeGuidance(model, w), model
        self.t_low, self.t_high = t_low, t_high
        self.config = model.config
        ### END SOLUTION

    def forward(self, x, t, y):
        ### BEGIN SOLUTION
        step = int(torch.as_tensor(t).reshape(-1)[0])
        inside = self.t_low <= step <= self.t_high
        return self.guided(x, t, y) if inside else self.model(x, t, y)
        ### END SOLUTION


def guidance_row(denoiser, n: int, seed: int) -> dict[str, float]:
    ### BEGIN SOLUTION
    labels = torch.arange(n) % 10
    images = generate(denoiser, scheduler, n, sampler="ddpm", steps=guidance_steps, seed=seed, labels=labels)
    features, probs = classify(classifier, images)
    spread = class_spread(features, labels.numpy())
    return {
        "accuracy": float((probs.argmax(1) == labels.numpy()).mean()),
        "diversity": float(np.mean([spread[c] / real_spread[c] for c in spread])) if spread else float("nan"),
    }
    ### END SOLUTION


### BEGIN SOLUTION
started = time.perf_counter()
w_high = max(scales)
interval_row = guidance_row(IntervalGuidance(model, w_high, 100, 600), n_eval, 1)
print(f"{n_eval} digits with w = {w_high:g} on [100, 600] in {time.perf_counter() - started:.0f} s")
for name, row in (("w = 0", table[0.0]), (f"w = {w_high:g} everywhere", table[w_high]),
                  (f"w = {w_high:g} on [100, 600]", interval_row)):  # fmt: skip
    print(f"{name:>22}: accuracy {row['accuracy']:.1%}, diversity {row['diversity']:.2f}")
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 10.3
interval = IntervalGuidance(model, 4.0, 100, 600)
with torch.no_grad():
    inside, late = torch.full((6,), 600), torch.full((6,), 50)
    assert torch.allclose(interval(x, inside, y), ClassifierFreeGuidance(model, 4.0)(x, inside, y), atol=1e-5)
    assert torch.allclose(interval(x, late, y), model(x, late, y), atol=1e-6)
row = guidance_row(model, 20, 3)  # unguided, 2 digits per class
assert set(row) == {"accuracy", "diversity"} and 0 <= row["accuracy"] <= 1 and row["diversity"] > 0
assert 0 <= interval_row["accuracy"] <= 1 and interval_row["diversity"] > 0
### BEGIN HIDDEN TESTS
with torch.no_grad():
    early = torch.full((6,), 900)
    assert torch.allclose(interval(x, early, y), model(x, early, y), atol=1e-6)
assert interval.config["num_classes"] == 10
# the measurement itself: section 4's definitions on section 4's kind of draw
check_labels = torch.arange(20) % 10
check_images = generate(
    model, scheduler, 20, sampler="ddpm", steps=guidance_steps, seed=3, labels=check_labels
)
check_features, check_probs = classify(classifier, check_images)
check_spread = class_spread(check_features, check_labels.numpy())
assert row["accuracy"] == float((check_probs.argmax(1) == check_labels.numpy()).mean())
assert math.isclose(
    row["diversity"], np.mean([check_spread[c] / real_spread[c] for c in check_spread]), rel_tol=1e-6
)
### END HIDDEN TESTS
print("Exercise 10.3 passed")

# %% [markdown]
# **Your answer (10.3, 1 point, graded by hand).** What does the interval keep, and what does it give up?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# **Part 3.** Measured at full size (the shipped `ddpm_mnist_cond`, 256 digits, 100 steps): w = 4 on
# [100, 600] keeps the accuracy at 100.0%, and the diversity rises from 0.64 (w = 4 everywhere) to 0.70 — some
# variety back, far from the 1.01 of no guidance, and with no standard error to say how sure that gain is.
# Exercise 10.1 says why the interval changes little here: the label shapes x̂0 most at high noise, above
# t = 600, where the interval leaves the conditional model alone, and the conditional model already picks the
# right digit 97% of the time. The interval keeps the accuracy and gives up little; it would matter more for a
# model whose unguided samples are often the wrong digit, at the large w such a model needs.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: keeps the accuracy of w = 4 and gets some diversity back (the measured numbers), and explains via exercise 10.1 why the change is small here: the conditional model already picks the right digit and the label acts above t = 600.
# - **½ point**: the measured comparison without the explanation, or the reverse.
# - **0**: no comparison with the two reference rows.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
