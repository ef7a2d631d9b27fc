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
# # 16 · Generated digits as training data
#
# A class-conditional model draws as many labelled digits as we ask for. Can another network learn from them?
# This chapter trains small classifiers on digits drawn from the shipped class-conditional denoiser and tests
# them on real held-out digits: first on generated digits alone, which measures the generator
# (the *classification accuracy score* of {cite:t}`ravuri2019cas`), then with generated digits added to a small
# real training set, which is the use one would make of them. Last, it asks what classifier-free guidance
# ([chapter 10](10_guidance.py)) does in this use. Symbols are those of the [notation](../notation.md) page.
#
# **After this chapter you can**
#
# - draw a labelled training set from a class-conditional model, a fixed number of digits per class, with
#   `generated_set`;
# - train a small classifier for a fixed number of steps, so that runs on different training sets differ only
#   in the data, and report its accuracy over several seeds as a mean with a standard error;
# - compute the classification accuracy score (CAS) of a generator and compare it with a classifier trained on
#   the same number of real digits;
# - measure whether generated digits help a classifier that has only 10 or 50 real digits per class, with
#   paired differences, and say where they help;
# - explain how guidance trades the variety of the generated digits against their label fidelity, and which
#   side of the trade a classifier trained on them needs.

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
from scipy import stats
from tqdm.auto import tqdm

from ddpm_lib.data import load_mnist
from ddpm_lib.generation import SampleSpec
from ddpm_lib.guidance import class_spread
from ddpm_lib.metrics import accuracy, classify
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.pretrained import load_classifier, load_pretrained
from ddpm_lib.profile import PROFILE

torch.manual_seed(0)
model, scheduler, provenance = load_pretrained("ddpm_mnist_cond")
model.requires_grad_(False)
classifier, classifier_provenance = load_classifier()
train_images, train_labels = load_mnist("train").tensors
heldout_images, heldout_labels = load_mnist("heldout").tensors
print(f"profile: {PROFILE.name}; class-conditional denoiser: {provenance['summary']}")
print(f"evaluation classifier: {classifier_provenance['summary']}")
assert model.config["num_classes"] == 10

# %% [markdown]
# ## 1. The question, and what is fair to compare
#
# Three kinds of data meet in this chapter, and it matters which model saw which:
#
# - the **4,500 training digits** (450 per class): the shipped denoiser `ddpm_mnist_cond` learned from all of
#   them, and so did [chapter 07](07_evaluation.py)'s evaluation classifier;
# - the **500 held-out digits** (50 per class): no model of the course ever trained on them. Every accuracy in
#   this chapter is measured on them;
# - **generated digits**, drawn from the denoiser with a label $y$: $\tilde x \sim p_\theta(x \mid y)$.
#
# A classifier $f$ trained on a set $D$ of labelled digits has held-out accuracy
#
# $$ \operatorname{acc}(D) = \frac{1}{|D_\text{held-out}|} \sum_{(x, y) \in D_\text{held-out}} \mathbb 1\big[f_D(x) = y\big]. $$
#
# {cite:t}`ravuri2019cas` call $\operatorname{acc}(\tilde D)$, for a set $\tilde D$ of generated digits with the labels they were
# asked for, the generator's **classification accuracy score** (CAS), and compare it with $\operatorname{acc}(D)$ for a
# real set $D$ of the same size. A generator whose digits of class $y$ look like real digits of class $y$, in all
# their variety, scores as well as real data; one that draws the wrong digit, or only the most typical shapes of
# each class, scores lower. Unlike the Fréchet distance of [chapter 07](07_evaluation.py), CAS asks what a downstream model can learn.
#
# The second use is **augmentation**: a classifier with only a few real digits per class gets generated ones
# added. Here one fact decides how to read any gain: the generated digits are not new information from nowhere.
# The denoiser learned from all 4,500 training digits, so adding its samples to 10 real digits per class passes
# on, in distilled form, what it learned from the other 440 per class. The question is whether that knowledge
# survives the round trip through a generative model, compared with learning from the few real digits alone.
#
# ## 2. A small classifier, trained for a fixed number of steps
#
# Each table of this chapter trains many classifiers, so the classifier must be small: [chapter 07](07_evaluation.py)'s evaluation
# classifier has 468,202 parameters and took 583 s to train (its provenance file,
# `ddpm_lib/weights/mnist_classifier.json`). `SmallClassifier` has two 3 × 3 convolutions (16 and 32 channels),
# each followed by ReLU and 2 × 2 max-pooling, then one linear layer: about 20,000 parameters, trained for a few
# seconds.
#
# To compare training sets of different sizes fairly, `train_small_classifier` runs a fixed number of
# optimisation steps, each on a batch drawn uniformly *with replacement* from the whole set. A set of 100 digits
# and a set of 1,100 digits then get the same steps, the same batch size and the same learning-rate schedule; only
# what the batches hold differs. One `seed` fixes the initial weights and every batch, without touching the global
# random state, so two calls with the same arguments give the same classifier. The exported cell starts the
# module `ddpm_lib.synthetic`; its argument checks reuse [chapter 06](06_sampling.py)'s.

# %%
#| default_exp synthetic
#| export
import math
import numbers
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.checks import check_int
from ddpm_lib.generation import SampleSpec, balanced_labels, generate, num_classes_of


class SmallClassifier(nn.Module):
    """A small CNN for 28 × 28 digits in [−1, 1]: (B, 1, 28, 28) → (B, ``num_classes``) logits.

    Two 3 × 3 convolutions (16 and 32 channels, padding 1), each followed by ReLU and 2 × 2 max-pooling, then one
    linear layer from the 32 × 7 × 7 features: 20,490 parameters for 10 classes.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        num_classes = check_int(num_classes, "num_classes", 2, 10**6)
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _check_labelled(images, labels, num_classes: int = 10) -> None:
    """Raise a ValueError unless ``images`` is (N, 1, 28, 28) float and ``labels`` (N,) integers in 0..K−1."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (N, 1, 28, 28), got {got}")
    if tuple(images.shape[1:]) != (1, 28, 28) or len(images) < 1:
        raise ValueError(f"images must have shape (N, 1, 28, 28) with N >= 1, got {tuple(images.shape)}")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
        or tuple(labels.shape) != (len(images),)
    ):
        got = (
            f"{labels.dtype} {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        raise ValueError(
            f"labels must be an integer tensor of shape ({len(images)},), one per image, got {got}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got values in {labels.min().item()}..{labels.max().item()}"
        )


def train_small_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> SmallClassifier:
    """A fresh :class:`SmallClassifier` trained for exactly ``steps`` steps on (``images``, ``labels``); eval mode.

    ``images`` (N, 1, 28, 28) in [−1, 1], ``labels`` (N,) in 0..9. Every step draws ``batch_size`` examples uniformly
    with replacement from the whole set and takes one AdamW step (weight decay 1e-4) on the cross-entropy, with a
    one-cycle learning rate peaking at ``lr``: sets of any size get the same steps and schedule. ``seed`` fixes the
    initial weights and every batch; the global random state is left as it was.
    """
    _check_labelled(images, labels)
    steps = check_int(steps, "steps", 1, 10**7)
    batch_size = check_int(batch_size, "batch_size", 1, 10**6)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    with torch.random.fork_rng(devices=[]):  # the initial weights, without moving the caller's random state
        torch.manual_seed(seed)
        classifier = SmallClassifier()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    classifier.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        loss = F.cross_entropy(classifier(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return classifier.eval()


# %% [markdown]
# Three checks: the parameter count, that a seed fixes the classifier (and leaves the global random state alone),
# and that a classifier trained on all 4,500 training digits does well on the held-out ones, so that any lower
# score later comes from the training data and not from the network. `accuracy` is [chapter 07](07_evaluation.py)'s: the share of
# digits whose predicted class is the label.

# %%
train_steps = PROFILE.synthetic_train_steps
parameters = sum(p.numel() for p in SmallClassifier().parameters())
state = torch.get_rng_state()
first = train_small_classifier(train_images[:200], train_labels[:200], steps=5, seed=3)
assert torch.equal(state, torch.get_rng_state())  # the global random state is untouched
again = train_small_classifier(train_images[:200], train_labels[:200], steps=5, seed=3)
other = train_small_classifier(train_images[:200], train_labels[:200], steps=5, seed=4)
assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
assert not torch.equal(first.head.weight, other.head.weight)
started = time.perf_counter()
on_all = train_small_classifier(train_images, train_labels, steps=train_steps, seed=0)
on_all_seconds = time.perf_counter() - started
all_accuracy = accuracy(on_all, heldout_images, heldout_labels)
print(f"SmallClassifier: {parameters:,} parameters; {train_steps} steps of 64 digits per classifier "
      f"({on_all_seconds:.1f} s for the one below)")  # fmt: skip
print(f"trained on all {len(train_images):,} training digits: held-out accuracy {all_accuracy:.1%}")
assert parameters == 20_490
assert all_accuracy > 0.5  # far above chance (10%), even with the few steps of the CI profile

# %% [markdown]
# ## 3. Small real training sets, and error bars over seeds
#
# `real_subset(images, labels, per_class, seed)` draws `per_class` digits of every class from the training digits,
# a different draw for every seed. A classifier's accuracy depends on which digits it got and on its initial
# weights, so every accuracy in the tables below is the mean over `PROFILE.synthetic_seeds` seeds $s = 0, 1, \dots$,
# each with its own real digits and its own initial weights, with the **standard error** of that mean,
#
# $$ \bar a = \frac1n \sum_{s=1}^{n} a_s, \qquad \operatorname{se}(\bar a) = \frac{1}{\sqrt n}\sqrt{\frac{1}{n-1}\sum_{s=1}^{n} (a_s - \bar a)^2}, $$
#
# from `mean_and_error`. When two training sets are compared, each seed trains one classifier on each, from the
# same initial weights, and we report the mean $\bar d$ and standard error of the per-seed *differences*: the
# variation the two runs of a seed share cancels, and the comparison is sharper than two separate error bars
# suggest. With only $n$ seeds the 95% interval is wider than two standard errors: it is
# $\bar d \pm t_{0.975,\,n-1}\operatorname{se}(\bar d)$, with Student's $t$ quantile for $n - 1$ degrees of freedom
# (the next cell prints it). A table says a change *helped* or *hurt* only when that interval excludes zero, and
# *within noise* otherwise. The generated digits of a table are drawn once; the error bars cover the real digits
# and the classifiers' training, not the draw of the generated set.


# %%
#| export
def real_subset(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of every class of ``labels``, drawn without replacement by ``seed``; (images, labels).

    Returns the images (K · per_class, 1, 28, 28) and their labels (K · per_class,), class by class (all the 0s
    first), for the K classes present. A different ``seed`` draws different examples.
    """
    _check_labelled(images, labels)
    per_class = check_int(per_class, "per_class", 1, len(images))
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise ValueError(
                f"per_class must be at most {len(members)} (the examples of class {label}), got {per_class}"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    index = torch.cat(chosen)
    return images[index], labels[index]


def mean_and_error(values) -> tuple[float, float]:
    """The mean of ``values`` (at least two numbers) and its standard error: sample standard deviation / √n."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    if values.numel() < 2 or not torch.isfinite(values).all():
        raise ValueError(f"values must be at least two finite numbers, got {values.tolist()}")
    return values.mean().item(), (values.std() / math.sqrt(values.numel())).item()


# %%
seeds = range(PROFILE.synthetic_seeds)
real_per_class = PROFILE.synthetic_real_per_class
subset_0, subset_labels_0 = real_subset(train_images, train_labels, real_per_class[0], seed=0)
subset_1, _ = real_subset(train_images, train_labels, real_per_class[0], seed=1)
print(
    f"{len(seeds)} seeds per table row; real subsets of {', '.join(map(str, real_per_class))} digits per class; "
    f"per class in the seed-0 subset: {torch.bincount(subset_labels_0).tolist()}"
)
assert torch.equal(torch.bincount(subset_labels_0), torch.full((10,), real_per_class[0]))
assert not torch.equal(subset_0, subset_1)  # each seed its own digits
print(f"95% intervals: mean ± {stats.t.ppf(0.975, len(seeds) - 1):.2f} standard errors")
mean, error = mean_and_error([0.5, 0.7, 0.6])
assert abs(mean - 0.6) < 1e-12 and abs(error - 0.1 / 3**0.5) < 1e-12

# %% [markdown]
# ## 4. A labelled generated set
#
# `generated_set(model, scheduler, per_class, spec)` asks a class-conditional model for `per_class` digits of every
# class and returns them with the labels it asked for: the training set $\tilde D$ of CAS. It is [chapter 10](10_guidance.py)'s
# sampling through `generate` with a `SampleSpec`, so any sampler, chain length, guidance scale $w$ and seed of the
# course can be used, and the labels come in `generate`'s order, every class in turn (0, 1, …, 9, 0, 1, …). Every
# digit starts from its own noise; the same spec and seed give the same set.


# %%
#| export
def generated_set(
    model: nn.Module, scheduler, per_class: int, spec: SampleSpec | None = None, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` digits of every class drawn from a class-conditional ``model``, and the labels asked for.

    Returns the images (K · per_class, 1, 28, 28) in [−1, 1] and the labels (K · per_class,) = 0, 1, …, K−1, 0, 1, …
    for a model of K classes, drawn by :func:`ddpm_lib.generation.generate` as ``spec`` says (options given as
    keywords replace the spec's, e.g. ``guidance=1.0``). ``spec.label`` must be None: the set holds every class.
    """
    classes = num_classes_of(model)
    if classes is None:
        raise ValueError(
            "model must be class-conditional (a Unet with num_classes set) to draw a labelled set"
        )
    per_class = check_int(per_class, "per_class", 1, 10**6)
    if spec is not None and not isinstance(spec, SampleSpec):
        raise ValueError(f"spec must be a SampleSpec or None, got {type(spec).__name__}")
    spec = replace(spec or SampleSpec(), **options)
    if spec.label is not None:
        raise ValueError(f"spec.label must be None (the set holds every class), got label={spec.label}")
    labels = balanced_labels(per_class * classes, classes)
    return generate(model, scheduler, len(labels), spec, labels=labels), labels


# %% [markdown]
# The pools this chapter trains on: `PROFILE.synthetic_per_class` digits of every class (100 in the full profile,
# 1,000 digits in all) at each guidance scale of `PROFILE.synthetic_scales`, drawn with [chapter 06](06_sampling.py)'s DDPM step on a
# respaced chain of `PROFILE.synthetic_steps` steps ([chapter 08](08_fast_sampling.py)), in the precision this machine is fast in, the same seed
# for every scale (so digit $i$ starts from the same noise at every $w$). A guided step costs a double batch. In
# the full profile the next cell takes about 5 minutes on a 2-core laptop (most of it for the two guided
# pools), with a progress bar over the scales.
#
# For each pool we also record its **label fidelity**: the share of its digits that [chapter 07](07_evaluation.py)'s evaluation
# classifier reads as the label they were asked for. That classifier is 99% accurate on real held-out digits, so
# a fidelity well below 99% means the generator drew other digits than it was asked for.

# %%
per_class, scales = PROFILE.synthetic_per_class, PROFILE.synthetic_scales
spec = SampleSpec(sampler="ddpm", steps=PROFILE.synthetic_steps, seed=0)
pools, fidelity = {}, {}
started = time.perf_counter()
for w in tqdm(scales, desc="guidance scales", disable=not PROFILE.progress):
    pools[w] = generated_set(model, scheduler, per_class, spec, guidance=w)
    fidelity[w] = accuracy(classifier, *pools[w])
heldout_fidelity = accuracy(classifier, heldout_images, heldout_labels)
print(f"{per_class} digits per class at each w, {spec.describe()}: {time.perf_counter() - started:.0f} s")
print(
    f"label fidelity (evaluation classifier reads the label asked for); real held-out digits: {heldout_fidelity:.1%}"
)
for w in scales:
    print(f"    w = {w:g}: {fidelity[w]:.1%}")

# %%
shown = 3  # digits per class in the figure
fig, axes = plt.subplots(len(scales), 10 * shown, figsize=(0.5 * 10 * shown, 0.62 * len(scales) + 0.3))
axes = np.atleast_2d(axes)
for row, w in enumerate(scales):
    images, labels = pools[w]
    for column in range(10 * shown):
        digit, copy = divmod(column, shown)
        ax = axes[row, column]
        ax.imshow(to_image(images[torch.nonzero(labels == digit).flatten()[copy]]), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[row, 0].set_ylabel(f"w = {w:g}", fontsize=8)
fig.tight_layout()
save_figure(fig, "16_generated_pools")
plt.show()

# %%
for w, (images, labels) in pools.items():
    assert images.shape == (10 * per_class, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(torch.bincount(labels), torch.full((10,), per_class))
    assert 0 <= fidelity[w] <= 1
if len(scales) > 1:  # the same starting noise at every w, and guidance changes the digits drawn from it
    assert not torch.equal(pools[scales[0]][0], pools[scales[-1]][0])
print(f"every pool: {10 * per_class} digits, {per_class} per class, in [-1, 1]")

# %% [markdown]
# ## 5. The classification accuracy score
#
# For every seed, one classifier trained on $10 \times$ `per_class` real digits (`per_class` of every class, drawn by the
# seed) and one on the generated pool at $w = 0$, the same number of digits, from the same initial weights; both
# tested on the 500 held-out digits. The label fidelity printed for the real digits is the evaluation
# classifier's accuracy on the held-out ones. The cell also trains one classifier per seed on each guided pool, for
# section 7. In the full profile it trains twenty classifiers, about a minute on a 2-core laptop, with a
# progress bar over the seeds.


# %%
def percent(value: float) -> float:
    return 100 * value


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences a − b, in percentage points."""
    return mean_and_error([percent(x - y) for x, y in zip(a, b, strict=True)])


def verdict(difference: float, error: float) -> str:
    """'helped' / 'hurt' when the 95% interval of a mean paired difference (points) excludes zero, else 'within noise'."""
    half = stats.t.ppf(0.975, len(seeds) - 1) * error
    words = f"{difference:+.1f} ± {error:.1f} points, 95% interval {difference - half:+.1f} to {difference + half:+.1f}"
    if abs(difference) <= half:
        return f"within noise ({words})"
    return f"{'helped' if difference > 0 else 'hurt'} ({words})"


cas_real, cas_scores = [], {w: [] for w in scales}
started = time.perf_counter()
for seed in tqdm(seeds, desc="seeds", disable=not PROFILE.progress):
    real = real_subset(train_images, train_labels, per_class, seed)
    cas_real.append(
        accuracy(train_small_classifier(*real, train_steps, seed=seed), heldout_images, heldout_labels)
    )
    for w in scales:  # section 7 reads the other scales
        trained = train_small_classifier(*pools[w], train_steps, seed=seed)
        cas_scores[w].append(accuracy(trained, heldout_images, heldout_labels))
real_mean, real_error = mean_and_error([percent(a) for a in cas_real])
cas_mean, cas_error = mean_and_error([percent(a) for a in cas_scores[0.0]])
gap, gap_error = paired(cas_scores[0.0], cas_real)
print(f"trained on {10 * per_class} digits ({per_class} per class), tested on {len(heldout_images)} held-out digits; "
      f"mean ± s.e. over {len(seeds)} seeds; {len(seeds) * (1 + len(scales))} classifiers trained in "
      f"{time.perf_counter() - started:.0f} s")  # fmt: skip
print(f"{'training set':<32}{'held-out accuracy (%)':>24}{'label fidelity':>16}")
print(f"{'real digits':<32}{real_mean:>17.1f} ± {real_error:<4.1f}{heldout_fidelity:>16.1%}")
print(f"{'generated, w = 0 (CAS)':<32}{cas_mean:>17.1f} ± {cas_error:<4.1f}{fidelity[0.0]:>16.1%}")
print(f"generated instead of real digits: {verdict(gap, gap_error)}")

# %%
assert all(0 <= a <= 1 for a in [*cas_real, *cas_scores[0.0]])
assert cas_mean > 10  # a classifier trained on generated digits alone beats chance on real ones
full_size = per_class >= 100 and len(seeds) >= 5
if full_size:  # what the text below reads off the table, checked where the seeds and digits are enough
    assert real_mean - 5 < cas_mean <= real_mean  # generated digits alone: close to real ones, not better
else:
    print(
        f"({per_class} digits per class, {len(seeds)} seeds in the {PROFILE.name} profile: too few to judge)"
    )

# %% [markdown]
# ## 6. Generated digits as augmentation
#
# Now the practical question. A classifier has `real_per_class` real digits of every class (10 and 50 in both
# profiles); does adding the generated pool at $w = 0$ (`per_class` digits of every class) help it? For every seed
# and size, one classifier on the real digits alone and one on the real digits plus the pool, from the same initial
# weights and with the same number of steps. With 10 real digits per class, the real ones are a tenth of the
# combined set; every batch draws from both in proportion. In the full profile the next cell trains twenty
# classifiers, about a minute on a 2-core laptop, with a progress bar over the real training sets.

# %%
augmented = {n: {"real only": [], "real + generated": []} for n in real_per_class}
pool_images, pool_labels = pools[0.0]
jobs = [(n, seed) for n in real_per_class for seed in seeds]
started = time.perf_counter()
for n, seed in tqdm(jobs, desc="real sets", disable=not PROFILE.progress):
    real_images, real_labels = real_subset(train_images, train_labels, n, seed)
    sets = {
        "real only": (real_images, real_labels),
        "real + generated": (torch.cat([real_images, pool_images]), torch.cat([real_labels, pool_labels])),
    }
    for name, data in sets.items():
        trained = train_small_classifier(*data, train_steps, seed=seed)
        augmented[n][name].append(accuracy(trained, heldout_images, heldout_labels))
print(
    f"held-out accuracy (%), mean ± s.e. over {len(seeds)} seeds; + generated: {10 * per_class} digits at w = 0; "
    f"{2 * len(jobs)} classifiers trained in {time.perf_counter() - started:.0f} s"
)
print(f"{'real per class':>14}{'real only':>16}{'real + generated':>20}{'difference (paired)':>24}")
gain = {}
for n, by_set in augmented.items():
    alone, added = (
        mean_and_error([percent(a) for a in by_set[k]]) for k in ("real only", "real + generated")
    )
    gain[n] = paired(by_set["real + generated"], by_set["real only"])
    print(f"{n:>14}{alone[0]:>10.1f} ± {alone[1]:<4.1f}{added[0]:>14.1f} ± {added[1]:<4.1f}"
          f"{gain[n][0]:>+18.1f} ± {gain[n][1]:<4.1f}")  # fmt: skip
for n in real_per_class:
    print(f"{n} real digits per class: generated digits {verdict(*gain[n])}")

# %% [markdown]
# The same runs as a picture, with one standard error either side: accuracy against the number of real digits per
# class, alone and with the generated pool; the CAS of section 5 (generated digits only) and its real-data
# counterpart are the two points at `per_class` digits per class.

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for name, marker in (("real only", "o-"), ("real + generated", "s-")):
    points = [mean_and_error([percent(a) for a in augmented[n][name]]) for n in real_per_class]
    ax.errorbar(
        real_per_class, [m for m, _ in points], yerr=[e for _, e in points], fmt=marker, capsize=3, label=name
    )
ax.errorbar([per_class], [real_mean], yerr=[real_error], fmt="o", color="C0", capsize=3)
ax.errorbar(
    [per_class], [cas_mean], yerr=[cas_error], fmt="^", color="C2", capsize=3, label="generated only (CAS)"
)
ax.set_xscale("log")
ax.set_xlabel("real digits per class")
ax.set_ylabel("held-out accuracy (%)")
ax.set_title(f"{len(seeds)} seeds per point; generated pool: {per_class} per class, w = 0", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "16_augmentation")
plt.show()

# %%
for by_set in augmented.values():
    assert all(len(scores) == len(seeds) and all(0 <= a <= 1 for a in scores) for scores in by_set.values())
if full_size:
    t = stats.t.ppf(0.975, len(seeds) - 1)
    few, more = min(real_per_class), max(real_per_class)
    assert (
        gain[few][0] - t * gain[few][1] > 5
    )  # with 10 real digits per class: a large gain, well outside noise
    assert abs(gain[more][0]) < 3 and abs(gain[more][0]) < gain[few][0] / 3  # with 50: small, if any
else:
    print(f"({len(seeds)} seeds in the {PROFILE.name} profile: too few to judge)")

# %% [markdown]
# ## 7. Guidance: label fidelity against diversity
#
# [Chapter 10](10_guidance.py) showed that guidance makes each class more certain and less varied. For a training set both matter:
# a digit drawn with the wrong shape teaches a wrong label, and a class drawn only in its most typical shapes leaves
# the classifier unprepared for the real variety. For every pool we measure
#
# - its **label fidelity** (section 4);
# - its **diversity**: [chapter 10](10_guidance.py)'s `class_spread`, the mean distance between two digits of one class in the
#   evaluation classifier's feature space, divided by the same for the real held-out digits of that class and
#   averaged over the classes (1.0: as varied as real digits);
# - its **CAS**, from section 5's runs, and the paired difference from $w = 0$.
#
# The real row scores the real training digits the same way: the fidelity is the evaluation classifier's accuracy
# on the held-out digits (it trained on the training digits, so those would flatter it), the diversity that of a
# real subset of `per_class` digits per class (seed 0), and the accuracy section 5's real-data runs.

# %%
heldout_features, _ = classify(classifier, heldout_images)
real_spread = class_spread(heldout_features, heldout_labels.numpy())


def diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes of the within-class feature spread, relative to the held-out digits' (1.0: as varied)."""
    spread = class_spread(classify(classifier, images)[0], labels.numpy())
    return float(np.mean([spread[c] / real_spread[c] for c in spread]))


real_diversity = diversity(*real_subset(train_images, train_labels, per_class, seed=0))
pool_diversity = {w: diversity(*pools[w]) for w in scales}
print(
    f"{per_class} digits per class per pool; CAS: mean ± s.e. over {len(seeds)} seeds, difference paired with w = 0"
)
print(f"{'training set':<16}{'label fidelity':>16}{'diversity':>11}{'CAS (%)':>16}{'vs w = 0':>18}")
print(
    f"{'real digits':<16}{heldout_fidelity:>16.1%}{real_diversity:>11.2f}{real_mean:>10.1f} ± {real_error:<4.1f}"
)
scale_gap = {}
for w in scales:
    mean, error = mean_and_error([percent(a) for a in cas_scores[w]])
    scale_gap[w] = paired(cas_scores[w], cas_scores[0.0])
    versus = "" if w == 0 else f"{scale_gap[w][0]:+.1f} ± {scale_gap[w][1]:.1f}"
    print(
        f"{f'w = {w:g}':<16}{fidelity[w]:>16.1%}{pool_diversity[w]:>11.2f}{mean:>10.1f} ± {error:<4.1f}{versus:>18}"
    )
best = max(scales, key=lambda w: np.mean(cas_scores[w]))
print(f"highest CAS at w = {best:g}; " + "; ".join(f"w = {w:g} against w = 0: {verdict(*scale_gap[w])}"
                                                  for w in scales if w != 0))  # fmt: skip

# %%
assert all(0 < value for value in [real_diversity, *pool_diversity.values()])
if full_size:
    t = stats.t.ppf(0.975, len(seeds) - 1)
    assert abs(pool_diversity[0.0] - real_diversity) < 0.1  # unguided: as varied as real digits
    for w in (w for w in scales if w > 0):
        assert fidelity[w] > fidelity[0.0]  # guidance: more digits of the label asked for ...
        assert pool_diversity[w] < pool_diversity[0.0] - 0.2  # ... much less varied ...
        assert scale_gap[w][0] + t * scale_gap[w][1] < 0  # ... and a worse classifier trained on them
    assert best == 0.0 and scale_gap[max(scales)][0] < scale_gap[min(w for w in scales if w > 0)][0]
else:
    print(
        f"({per_class} digits per class, {len(seeds)} seeds in the {PROFILE.name} profile: too few to judge)"
    )

# %% [markdown]
# ## Reading the tables
#
# The shipped `ddpm_mnist_cond`; the numbers below are the ones the three tables print in the full profile
# (about eight minutes for the chapter on two CPU cores): 100
# generated digits per class, 50-step DDPM, five seeds, a small classifier trained for 500 steps on each set and
# tested on the 500 held-out digits. Accuracies in %, mean ± standard error over the seeds; differences paired
# over the seeds, with their 95% intervals.
#
# Did the generated digits help? It depends on how many real ones there are.
#
# - **Where real digits are scarce, a lot.** With 10 real digits per class, adding the 1,000 generated ones raises the
#   held-out accuracy from 81.4% to 92.8%, by 11.4 points, an interval of +9.5 to +13.2 that is far from zero. This
#   is the clearest result of the chapter, and section 1 says where the gain comes from: the denoiser learned from all
#   450 training digits of every class, and its samples pass that on. Much of it arrives: 92.8% is within three
#   points of the 95.8% the same classifier reaches on all 4,500 training digits (section 2's check).
# - **Where real digits are plentiful, not measurably.** With 50 real digits per class the gain shrinks to 1.1 ± 0.6
#   points, an interval from −0.6 to +2.9: within noise at five seeds. Fifty real digits per class already take the
#   small classifier to 92.7%, near what it reaches on 100 real digits per class (94.1%); the generated digits have
#   little left to add.
# - **Instead of real digits, nearly as good.** Trained on 1,000 generated digits alone, the classifier scores
#   92.3%, 1.8 ± 0.6 points below 1,000 real digits: an interval from −3.5 to −0.0, so at five seeds the loss is
#   just measurable, and small. A CAS this close to the real-data score says the unguided model covers each class
#   in something like its real variety (diversity 1.02), and that the 3% of its digits the evaluation classifier
#   reads as another class cost little.
# - **Guidance hurts in this use.** Guidance does what [chapter 10](10_guidance.py) showed: label fidelity rises from 96.7% to 99.9%
#   ($w = 1$) and 100% ($w = 3$) while the variety falls to 0.77 and 0.66 of real digits'. A classifier trained on
#   the guided digits is worse, by 4.4 points at $w = 1$ and 10.6 at $w = 3$, intervals far from zero: the few
#   percent of digits with a wrong-looking shape cost much less than the missing variety does, because the
#   held-out digits have that variety. Measured by what a classifier learns, the best guidance scale is none,
#   whereas by label fidelity it would be the largest — the two measures recommend opposite settings.
#
# The cells after the three tables check the main statements in the full profile: the size and sign of each
# effect, and for the guided pools that the interval excludes zero.
#
# ## Summary
#
# - Generated digits can be training data: `generated_set` draws a fixed number of labelled digits of every
#   class from a class-conditional model with any `SampleSpec`; a small classifier (`SmallClassifier`, about
#   20,000 parameters) trained for a fixed number of steps (`train_small_classifier`) measures what they teach,
#   on real held-out digits.
# - The classification accuracy score (CAS) is the held-out accuracy of a classifier trained on generated digits
#   only; compare it with the same classifier trained on as many real digits.
# - Report such accuracies over several seeds (`mean_and_error`), compare two training sets by the per-seed
#   paired differences, and call a difference real only when its 95% interval, with Student's $t$ for few
#   seeds, excludes zero.
# - On the shipped model (full profile): generated digits helped a lot where real ones were scarce (10 per class:
#   +11.4 points), not measurably with 50 per class, and alone they came within 1.8 ± 0.6 points of as many real
#   digits.
# - The generated digits carry what the denoiser learned from its own training data; a gain from them is that
#   knowledge passed on, not information from nowhere.
# - Guidance raises label fidelity and lowers variety; as training data, variety matters more: every guided pool
#   trained a worse classifier than the unguided one.
#
# ## Exercises
#
# :::{exercise} 16.1 · ★☆☆ · Which digits does the generator get wrong?
# :nonumber:
#
# Label fidelity is one number per pool. Write `per_class_fidelity(classifier, images, labels)`: a float tensor of
# shape (10,) whose entry $c$ is the share of the digits with label $c$ that `classifier` reads as $c$ (use
# `classify(classifier, images)`, which returns features and probabilities). Print it for the $w = 0$ pool. Which
# classes fall short, and does guidance ($w > 0$) fix them?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def per_class_fidelity(classifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    _, probabilities = classify(classifier, images)
    read_as = torch.from_numpy(probabilities.argmax(1))
    return torch.stack([(read_as[labels == c] == c).float().mean() for c in range(10)])
    ### END SOLUTION


### BEGIN SOLUTION
for w in scales:
    print(
        f"w = {w:g}: "
        + " ".join(f"{c}: {v:.0%}" for c, v in enumerate(per_class_fidelity(classifier, *pools[w]).tolist()))
    )
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 16.1
by_class = per_class_fidelity(classifier, *pools[0.0])
assert by_class.shape == (10,) and by_class.dtype == torch.float32
assert ((by_class >= 0) & (by_class <= 1)).all()
# every class equally often: the mean over the classes is the pool's fidelity
assert abs(by_class.mean().item() - fidelity[0.0]) < 1e-6
### BEGIN HIDDEN TESTS
heldout_by_class = per_class_fidelity(classifier, heldout_images, heldout_labels)
assert abs(heldout_by_class.mean().item() - heldout_fidelity) < 1e-6
flipped = per_class_fidelity(classifier, heldout_images, (heldout_labels + 1) % 10)
assert flipped.max() < 0.2  # wrong labels are read as wrong
### END HIDDEN TESTS
print("Exercise 16.1 passed")

# %% [markdown]
# **Your answer (16.1, 1 point, graded by hand).** Which classes fall short, and does guidance fix them?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# at w = 0 (full profile) only the 0s (100%) and the 1s (99%) reach the evaluation classifier's 99%
# on real digits; the 7s (94%) and the 8s (95%) fall shortest, the others lie at 96-97%. Guidance fixes every
# class: at w = 1 all are at 99-100%, at w = 3 all at 100%. Section 7 shows what that costs as training data.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: names the classes below the classifier's accuracy on real digits in the printed w = 0 row, and reports that guidance brings every class to 99–100%.
# - **½ point**: the short classes without the effect of guidance, or the reverse.
# - **0**: no classes named.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 16.2 · ★★☆ · Memorised or new?
# :nonumber:
#
# A generator that reproduced its training digits would score a high CAS and teach nothing new. Write
# `nearest_training_distance(images, train_images)`: for each image, the Euclidean distance (over the 784 pixels) to
# its nearest training digit, a float tensor of shape (N,). Work in chunks of images so that the distance matrix of
# 1,000 × 4,500 digits is never needed at once (`torch.cdist` does one chunk). Compare the distances of the $w = 0$
# pool with those of the held-out digits, which no model saw: is any generated digit a copy of a training digit?
# What about $w = 3$?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def nearest_training_distance(
    images: torch.Tensor, train_images: torch.Tensor, chunk: int = 250
) -> torch.Tensor:
    ### BEGIN SOLUTION
    train = train_images.flatten(1)
    return torch.cat([torch.cdist(part.flatten(1), train).min(1).values for part in images.split(chunk)])
    ### END SOLUTION


### BEGIN SOLUTION
heldout_nearest = nearest_training_distance(heldout_images, train_images)
print(f"held-out digits: median distance to the nearest training digit {heldout_nearest.median():.2f}, "
      f"smallest {heldout_nearest.min():.2f}")  # fmt: skip
for w in scales:
    nearest = nearest_training_distance(pools[w][0], train_images)
    print(f"w = {w:g} pool: median {nearest.median():.2f}, smallest {nearest.min():.2f}, "
          f"below the held-out digits' smallest: {(nearest < heldout_nearest.min()).sum().item()}")  # fmt: skip
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 16.2
distances = nearest_training_distance(train_images[:5], train_images)
assert (
    distances.shape == (5,) and distances.max() < 0.1
)  # a training digit is its own nearest (up to rounding)
unseen = nearest_training_distance(heldout_images[:40], train_images)
assert unseen.shape == (40,) and (unseen > 1).all()
### BEGIN HIDDEN TESTS
brute = torch.cdist(heldout_images[:7].flatten(1), train_images[:300].flatten(1)).min(1).values
assert torch.allclose(nearest_training_distance(heldout_images[:7], train_images[:300]), brute, atol=1e-4)
### END HIDDEN TESTS
print("Exercise 16.2 passed")

# %% [markdown]
# **Your answer (16.2, 1 point, graded by hand).** Is any generated digit a copy of a training digit, and what about w = 3?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# no copies. In the full profile the median distance of a w = 0 digit to its nearest training
# digit is 10.37, that of a held-out digit, which no model saw, 10.15. Two generated digits of 1,000 come closer
# to a training digit than any held-out digit does (2.35 against 3.19); plot those pairs to see why: a thin
# digit such as a 1 is one stroke, and two strokes at the same slant are close without one being a copy of the
# other. Guidance does not change this (w = 3: median 10.04, two digits below 3.19). So the CAS of section 5 is
# not a memorised training set scoring itself.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: no copies: the median nearest-training distance of generated digits is about that of held-out digits; the few close ones are thin digits (one stroke at the same slant), and w = 3 does not change this.
# - **½ point**: the medians compared without looking at the closest pairs, or the reverse.
# - **0**: a verdict without the held-out comparison.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 16.3 · ★★★ · Keep only the digits a classifier believes
# :nonumber:
#
# A common recipe filters a generated training set: keep a digit only when a trained classifier reads it as its
# label, confidently.
#
# 1. Write `confident_subset(classifier, images, labels, threshold=0.9)`: the images and labels of the digits that
#    `classifier` assigns to their label with probability at least `threshold` (use `classify`).
# 2. Filter the $w = 0$ pool with the evaluation classifier and compute its CAS over section 5's seeds, paired with
#    the unfiltered pool's. How many digits does the filter remove, and does it help?
# 3. Why is this comparison not a clean measurement of the generator? Which data has the filter seen?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def confident_subset(
    classifier, images: torch.Tensor, labels: torch.Tensor, threshold: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    ### BEGIN SOLUTION
    _, probabilities = classify(classifier, images)
    probabilities = torch.from_numpy(probabilities)
    keep = probabilities[torch.arange(len(labels)), labels] >= threshold
    return images[keep], labels[keep]
    ### END SOLUTION


### BEGIN SOLUTION
filtered = confident_subset(classifier, *pools[0.0])
filtered_scores = [
    accuracy(train_small_classifier(*filtered, train_steps, seed=seed), heldout_images, heldout_labels)
    for seed in seeds
]
print(
    f"the filter keeps {len(filtered[0])} of {len(pools[0.0][0])} digits; per class {torch.bincount(filtered[1], minlength=10).tolist()}"
)
print(f"CAS filtered minus unfiltered: {verdict(*paired(filtered_scores, cas_scores[0.0]))}")
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 16.3
kept_images, kept_labels = confident_subset(classifier, heldout_images, heldout_labels)
_, heldout_probabilities = classify(classifier, heldout_images)
expected = heldout_probabilities[np.arange(len(heldout_labels)), heldout_labels.numpy()] >= 0.9
assert len(kept_images) == len(kept_labels) == int(expected.sum())
assert torch.equal(kept_labels, heldout_labels[torch.from_numpy(expected)])
assert 0 < len(filtered[0]) <= len(pools[0.0][0]) and len(filtered_scores) == len(seeds)
### BEGIN HIDDEN TESTS
assert len(confident_subset(classifier, heldout_images, heldout_labels, threshold=0.0)[0]) == len(
    heldout_images
)
wrong = confident_subset(classifier, heldout_images, (heldout_labels + 1) % 10, threshold=0.5)[0]
assert len(wrong) < 10
### END HIDDEN TESTS
print("Exercise 16.3 passed")

# %% [markdown]
# **Your answer (16.3, 1 point, graded by hand).** How many digits does the filter remove, and does it help? Why is
# this comparison not a clean measurement of the generator?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# (3) the filter is not part of the generator. The evaluation classifier was trained on all 4,500
# real training digits (and reaches 99% on the held-out ones), so a filtered set carries that classifier's
# knowledge of real data too: a gain from filtering is a gain of the generator and the filter together, and a
# strong enough filter could make even a poor generator look good. A clean variant filters with a classifier
# trained only on generated digits.
#
# (2) in the full profile the filter keeps 952 of the 1,000 digits (the 2s and the 7s lose 8 of 100
# each) and the CAS moves by +0.2 ± 0.1 points, an interval from -0.1 to +0.6: no measurable gain. The 5% of digits the
# filter removes were doing little harm, which agrees with section 7: for a classifier trained on them, the shape of
# a few digits matters less than the variety of all.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: the count and the paired CAS change read with its interval (no measurable gain here); and the filter
#   is a classifier trained on real digits, so a gain belongs to the generator and the filter together (a clean
#   variant filters with a classifier trained on generated digits).
# - **½ point**: one of the two parts.
# - **0**: reports the CAS change only, without its uncertainty or what the filter knows.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
