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
# # 07 · Evaluation: are these digits?
#
# A grid of samples convinces a human, but it can't tell two samplers apart, show that training longer
# helped, or notice that the model never draws a 4. This chapter builds the numbers that can, for
# 28×28 digits, without downloading anything.
#
# **After this chapter you can**
#
# - train a small MNIST classifier and use it as a *feature extractor* for generated images;
# - compute the Fréchet distance between two sets of images and say what a value means, by comparing it
#   with a real-vs-real **floor** and two **ceilings** (a blurred and a pure-noise baseline);
# - measure mode coverage (class histogram, its entropy, an Inception-Score analogue) and sample
#   confidence;
# - say how sure a number is, with the standard error over disjoint draws — and why a percentile bootstrap
#   of a biased statistic is not a confidence interval;
# - compare `sample()` and `sample_clip()`, and checkpoints along a training run, with these numbers;
# - run the whole evaluation from the command line: `python -m ddpm_lib evaluate`.
#
# Symbols follow the [notation page](../notation.md). Evaluating means sampling, and every sample here takes
# 1000 network calls: the chapter draws a few hundred digits, which takes a while on a CPU (the
# instructors' page lists the times). Every table says how many samples it used.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

# %%
#| default_exp metrics

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
import torch
from tqdm.auto import tqdm

from ddpm_lib.checkpoint import load_denoiser
from ddpm_lib.data import load_mnist
from ddpm_lib.generation import generate
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.precision import compute
from ddpm_lib.pretrained import load_classifier, load_pretrained, snapshot_paths
from ddpm_lib.profile import PROFILE
from ddpm_lib.result_cache import cached

torch.manual_seed(0)
hw = compute()  # the device and precision this machine samples fast in (chapter 04, section 11)
train_images, train_labels = load_mnist("train").tensors
heldout_images, heldout_labels = load_mnist("heldout").tensors
model, scheduler, provenance = load_pretrained(device=hw.device)
print(f"profile: {PROFILE.name}; shipped denoiser: {provenance['summary']}")

# %% [markdown]
# ## 1. Why not FID with Inception?
#
# The standard number for image generators is the **Fréchet Inception Distance** (FID)
# {cite:p}`heusel2017fid`: push real and generated images through an ImageNet classifier (Inception-v3
# {cite:p}`szegedy2016inception`), fit a Gaussian to each set of 2048-dimensional features, and measure the
# distance between the two Gaussians. For MNIST it is a poor fit: Inception expects 299×299 colour
# photographs, its weights must be downloaded, and its features describe dogs and cars, not pen strokes.
# The usual practice for digits is to keep the recipe and change the network: features from a classifier
# trained on the domain itself. We train one — a small LeNet-style CNN {cite:p}`lecun1998mnist` — on the
# training split, and keep the held-out split for measuring it.
#
# ## 2. The evaluation classifier
#
# Two convolution blocks (28×28 → 14×14 → 7×7), a 128-unit layer whose activations are the
# **features**, and a linear layer to the 10 classes. BatchNorm is fine here: the classifier is
# always used in eval mode, on batches of finished images. With only 4,500 training digits, random
# small rotations, scalings and shifts (*augmentation*) stand in for the digits we do not have; the shipped
# classifier is right on at least 98% of the held-out digits (the cell below prints it).
#
# One more ingredient matters for *evaluation*: a classifier trained only on digits has never been told
# that something is *not* a digit, and softmax has no way to answer "none of these": its ten probabilities
# always sum to one, and nothing stops it from putting almost all of that on one class for pure noise. So we
# also show it non-digits — uniform noise and smooth random blobs, the typical
# output of an under-trained denoiser — with the uniform distribution as the target (*outlier exposure*
# {cite:p}`hendrycks2019oe`): the loss adds $\lambda \cdot \frac1{10}\sum_k -\log p(k \mid x_{\text{outlier}})$,
# with $\lambda = 0.5$. Then "confident" means "looks like a digit".

# %%
#| export
import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn


class MnistClassifier(nn.Module):
    """A LeNet-style CNN for 28×28 digits in [-1, 1]; ``features(x)`` is its 128-d penultimate layer."""

    def __init__(self, feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        self.config = {"feature_dim": feature_dim, "dropout": dropout}

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2),
            ]  # fmt: skip

        self.body = nn.Sequential(
            *block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, feature_dim), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine jitter per image: rotation ±11°, scale ±10%, shift ±2 pixels (background stays -1)."""
    n = images.shape[0]

    def uniform(*shape):
        return torch.rand(shape, generator=generator) * 2 - 1

    angle, scale, shift = uniform(n) * 0.2, 1 + uniform(n) * 0.1, uniform(n, 2) * 0.15
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # sample (x + 1) so that pixels pulled in from outside the image are background (0 -> -1)
    return F.grid_sample(images + 1, grid, align_corners=False) - 1


def outlier_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images that are not digits, in [-1, 1]: half uniform noise, half smooth bright blobs on black."""
    noise = torch.rand((n, 1, 28, 28), generator=generator) * 2 - 1
    smooth = F.avg_pool2d(torch.randn((n, 1, 28, 28), generator=generator), 7, stride=1, padding=3)
    smooth = smooth / smooth.flatten(1).std(1).view(-1, 1, 1, 1)
    blobs = (1.5 * smooth - 1.2).clamp(-1, 1)  # mostly background (-1) with a few bright patches
    return torch.cat([noise[: n // 2], blobs[n // 2 :]])


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    outlier_weight: float = 0.5,
    on_epoch=None,
) -> MnistClassifier:
    """Train :class:`MnistClassifier` with augmentation, outlier exposure, AdamW and a one-cycle LR.

    Each batch adds ``batch_size // 4`` :func:`outlier_images` whose target is the uniform distribution,
    weighted by ``outlier_weight``. Returns the classifier in eval mode.

    ``on_epoch(epoch, classifier)`` is called after each epoch (e.g. to report held-out accuracy).
    """
    if epochs < 1 or batch_size < 1 or batch_size > len(images):
        raise ValueError(f"need epochs >= 1 and 1 <= batch_size <= {len(images)}; got {epochs}, {batch_size}")
    torch.manual_seed(seed)  # initial weights and dropout
    generator = torch.Generator().manual_seed(seed)
    classifier = MnistClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = len(images) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        classifier.train()
        order = torch.randperm(len(images), generator=generator)
        for i in range(steps_per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            digits = augment(images[index], generator)
            if outlier_weight > 0:  # one forward pass, so BatchNorm sees the same mixture as in every batch
                logits = classifier(torch.cat([digits, outlier_images(batch_size // 4, generator)]))
                logits, outlier_logits = logits[:batch_size], logits[batch_size:]
            else:
                logits = classifier(digits)
            loss = F.cross_entropy(logits, labels[index])
            if outlier_weight > 0:
                loss = loss - outlier_weight * outlier_logits.log_softmax(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        classifier.eval()
        if on_epoch is not None:
            on_epoch(epoch + 1, classifier)
    return classifier


@torch.no_grad()
def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose predicted class equals ``labels``."""
    classifier.eval()
    predictions = torch.cat([classifier(chunk).argmax(1) for chunk in images.split(500)])
    return (predictions == labels).float().mean().item()


# %% [markdown]
# Train it live (the CI profile trains a single epoch, just to run the code), and load the copy the
# course ships, trained with the same function by `python -m ddpm_lib train-classifier` (the command
# and its result are in the provenance file). In the full profile the next cell takes about two minutes on a
# 2-core laptop (15 epochs); each epoch prints a line as it ends, and a progress bar counts the epochs.


# %%
def train_and_report(epochs: int) -> dict:
    """Train the classifier for ``epochs`` epochs, printing its held-out accuracy after each; its training time."""
    started = time.perf_counter()
    bar = tqdm(total=epochs, desc="epochs", disable=not PROFILE.progress)

    def report_epoch(epoch: int, classifier_so_far: nn.Module) -> None:
        bar.update(1)
        held_out = accuracy(classifier_so_far, heldout_images, heldout_labels)
        print(f"epoch {epoch:2d}: held-out accuracy {held_out:.2%}")

    train_classifier(train_images, train_labels, epochs=epochs, on_epoch=report_epoch)
    bar.close()
    return {"seconds": time.perf_counter() - started}


# cached: when the maintainers re-execute the chapters for the book, a kept result stands in while its code is
# unchanged (ddpm_lib.result_cache); here it just trains
trained = cached("chapter 07, training the classifier", train_and_report, PROFILE.classifier_epochs)
print(f"trained {PROFILE.classifier_epochs} epoch(s) in {trained['seconds']:.0f} s")

classifier, classifier_provenance = load_classifier()
shipped_accuracy = accuracy(classifier, heldout_images, heldout_labels)
print(f"shipped classifier: {classifier_provenance['summary']}")
print(f"held-out accuracy of the shipped classifier: {shipped_accuracy:.2%} (500 digits)")
assert shipped_accuracy >= 0.98
with torch.no_grad():
    fooled = classifier(outlier_images(1000, torch.Generator().manual_seed(1))).softmax(1).max(1).values
print(
    f"non-digits (noise, blobs) it calls a digit with confidence >= 0.9: {(fooled >= 0.9).float().mean():.1%}"
)
assert (fooled >= 0.9).float().mean() < 0.05

# %% [markdown]
# Held-out accuracy is a statement about 500 digits: one mistake is 0.2 percentage points. Which digits
# does it get wrong? If they are ones a person would also hesitate over, the classifier is a fair judge.

# %%
with torch.no_grad():
    predicted = classifier(heldout_images).argmax(1)
wrong = (predicted != heldout_labels).nonzero().flatten()
print(f"{len(wrong)} of {len(heldout_labels)} held-out digits misclassified")
fig, axes = plt.subplots(1, max(len(wrong), 1), figsize=(1.3 * max(len(wrong), 1), 1.7), squeeze=False)
for ax, i in zip(axes[0], wrong.tolist(), strict=False):
    ax.imshow(to_image(heldout_images[i]), cmap="gray")
    ax.set_title(f"{heldout_labels[i]}→{predicted[i]}", fontsize=9)
for ax in axes[0]:
    ax.axis("off")
fig.suptitle("held-out mistakes: true → predicted", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Features and class probabilities
#
# Every metric below starts from two arrays per set of images: the 128-d features $f(x)$ and the class
# probabilities $p(y \mid x) = \mathrm{softmax}$ of the logits. The metrics check their input first: a
# tensor of the wrong shape, or images left in $[0, 1]$ or $[0, 255]$, would give a number that looks
# fine and means nothing.


# %%
#| export
def check_images(images, name: str = "images") -> torch.Tensor:
    """Raise a clear error unless ``images`` is a finite float tensor (N >= 2, 1, 28, 28) in [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 1, 28, 28), got {type(images).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) or images.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, 1, 28, 28) with N >= 2, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"{name} must lie in [-1, 1] (the model's range), got values in [{low:.3g}, {high:.3g}]"
        )
    return images


@torch.no_grad()
def classify(
    classifier: nn.Module, images: torch.Tensor, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """``(features, probabilities)`` of ``images`` as float64 arrays of shape (N, 128) and (N, 10)."""
    check_images(images)
    classifier.eval()
    device = next(classifier.parameters()).device
    features, probs = [], []
    for chunk in images.float().split(batch_size):
        f = classifier.features(chunk.to(device))
        features.append(f.double().cpu())
        probs.append(classifier.head(f).double().softmax(1).cpu())
    return torch.cat(features).numpy(), torch.cat(probs).numpy()


# %%
real_features, real_probs = classify(classifier, heldout_images)
print(f"held-out: features {real_features.shape}, probabilities {real_probs.shape}")
assert np.allclose(real_probs.sum(1), 1)
for bad, label in [(heldout_images[:, :, :14], "cropped"), ((heldout_images + 1) * 127.5, "[0, 255]")]:
    try:
        classify(classifier, bad)
    except ValueError as error:
        print(f"{label:>9}: {error}")

# %% [markdown]
# ## 4. The Fréchet distance
#
# Fit a Gaussian to each set of features — mean $\mu$ and covariance $\Sigma$ — and measure the
# 2-Wasserstein (Fréchet) distance between the two Gaussians, which has a closed form {cite:p}`dowson1982frechet`:
#
# $$ d^2\big(\mathcal N(\mu_1, \Sigma_1), \mathcal N(\mu_2, \Sigma_2)\big)
#    = \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\!\Big(\Sigma_1 + \Sigma_2 - 2\,(\Sigma_1 \Sigma_2)^{1/2}\Big). $$
#
# The first term sees a shift of the average image (all digits too thick, say); the second a change
# of spread (too little variety, or variety of the wrong kind). The matrix square root is the one
# delicate step: $\Sigma_1\Sigma_2$ is not symmetric, and with few samples it is singular. We use
# `scipy.linalg.sqrtm`, and, as the reference FID code does, retry with a small ridge $\epsilon I$
# added to both covariances when the result is not finite; round-off leaves a tiny imaginary part, which
# we drop.


# %%
#| export
def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``features`` (N, D), N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, dtype=np.float64)),
        np.atleast_1d(np.asarray(mu2, dtype=np.float64)),
    )
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"need means of shape (D,) and covariances (D, D) with one D; got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    with warnings.catch_warnings():  # with fewer samples than dimensions the product is singular
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            ridge = eps * np.eye(d)
            covmean = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(max(value, 0.0))


def features_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two sets of features."""
    return frechet_distance(*gaussian_fit(features1), *gaussian_fit(features2))


# %% [markdown]
# Three checks of the formula before we trust it: the distance of a set to itself is zero; it is
# symmetric; and for one-dimensional Gaussians it reduces to $(\mu_1 - \mu_2)^2 + (\sigma_1 - \sigma_2)^2$.

# %%
print(f"d(held-out, held-out)       = {features_distance(real_features, real_features):.2e}")
half1, half2 = real_features[::2], real_features[1::2]
d12, d21 = features_distance(half1, half2), features_distance(half2, half1)
print(f"d(half 1, half 2) = {d12:.4f}, d(half 2, half 1) = {d21:.4f}")
assert features_distance(real_features, real_features) < 1e-6
assert abs(d12 - d21) < 1e-6 * max(d12, 1)
one_d = frechet_distance([1.0], [[4.0]], [3.0], [[9.0]])
print(f"1-D: d(N(1, 2²), N(3, 3²)) = {one_d:.6f}; closed form (1-3)² + (2-3)² = 5")
assert abs(one_d - 5.0) < 1e-9

# %% [markdown]
# ## 5. Confidence and mode coverage
#
# The Fréchet distance folds everything into one number. Three simpler statistics of the class
# probabilities say *what* is wrong. For $n$ samples with $p_i = p(y \mid x_i)$ and predicted classes
# $\hat y_i = \arg\max p_i$:
#
# - **confident share**: $\frac1n \#\{i : \max_y p_i(y) \ge 0.9\}$ — does each sample look like *some* digit?
# - **class histogram** $h_k = \frac1n \#\{i : \hat y_i = k\}$, and its **entropy** $H(h) = -\sum_k h_k \log_2 h_k$,
#   at most $\log_2 10 = 3.32$ bits when all ten digits are equally common — are all digits there (mode coverage)?
# - an **Inception-Score analogue** $\mathrm{IS} = \exp\big(\frac1n \sum_i \mathrm{KL}(p_i \,\Vert\, \bar p)\big)$ with
#   $\bar p = \frac1n\sum_i p_i$ ({cite:t}`salimans2016improved`, with our classifier instead of Inception): 1 when every
#   sample gets the same prediction, 10 when each sample is one confident digit and the digits are uniform.


# %%
#| export
def class_statistics(probs: np.ndarray, threshold: float = 0.9) -> dict:
    """Confident share, class histogram, its entropy (bits), classes present and the IS analogue."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 10 or not np.allclose(probs.sum(1), 1, atol=1e-4):
        raise ValueError(f"probs must be (N, 10) rows of probabilities, got shape {probs.shape}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    n = probs.shape[0]
    counts = np.bincount(probs.argmax(1), minlength=10)
    share = counts / n
    nonzero = share[share > 0]
    mean = probs.mean(0)
    kl = (probs * (np.log(np.clip(probs, 1e-12, None)) - np.log(np.clip(mean, 1e-12, None)))).sum(1)
    return {
        "confident_share": float((probs.max(1) >= threshold).mean()),
        "class_counts": counts.tolist(),
        "classes_present": int((counts > 0).sum()),
        "class_entropy_bits": float(-(nonzero * np.log2(nonzero)).sum()),
        "max_class_ratio": float(share.max() * 10),
        "min_class_ratio": float(share.min() * 10),
        "inception_score": float(np.exp(kl.mean())),
    }


# %%
stats = class_statistics(real_probs)
print({k: v for k, v in stats.items() if k != "class_counts"})
print("held-out class counts:", stats["class_counts"])
assert stats["classes_present"] == 10 and stats["confident_share"] > 0.95
assert class_statistics(np.full((5, 10), 0.1))["inception_score"] == 1.0

# %% [markdown]
# ## 6. What a number means: floor, ceilings and disjoint draws
#
# A Fréchet distance of 3.2 means nothing on its own. Two sets of *real* digits are not at distance 0
# either: with $n$ samples the estimate carries noise and a positive bias that grows as $n$ shrinks. So
# every table here has, **at the same $n$**:
#
# - the **floor**: $n$ real training digits vs the held-out digits — what real data scores at this $n$;
# - two **ceilings**: the same digits blurred (Gaussian, σ = 1.5 px: right shapes, wrong texture), and
#   uniform noise in $[-1, 1]$ (no digit at all).
#
# The floor is a reference point, not a bound. It is itself one draw of $n$ real digits, with a spread of its own
# from draw to draw ([chapter 08](08_fast_sampling.py) measures it at $n = 256$), and it measures real digits in all their variety: a
# generator whose samples are tidier and less varied than real digits — a class-conditional or a guided one — can
# score below it. (The floor uses training digits because the held-out split is all we hold out, 500 digits; the
# classifier has seen them in training.)
#
# **How sure is a number?** The usual quick answer, a percentile bootstrap (resample the images with
# replacement, recompute, read off the 2.5th and 97.5th percentiles), fails for a *biased* statistic. A
# resample repeats images, which lowers its effective $n$ and so *adds* bias: the "interval" it gives for
# the Fréchet distance sits above the estimate it is meant to describe. The cell after the next one shows
# it on the floor. We use **repeated disjoint draws** instead: split the $n$ images into $k$ disjoint parts
# of $m = n/k$, compute the statistic on each part (against the whole reference set), and report the mean
# of the $k$ values and its standard error $s/\sqrt k$, $s$ their standard deviation. The parts share no
# image, so the $k$ values are independent draws of "the statistic at $m$ samples", and mean ± standard
# error is an honest statement about that quantity, biased or not. The price: it describes the
# statistic at $m$, not at $n$, so two rows are compared draw mean against draw mean, at the same $m$ —
# which every table of this course does, since all its rows have the same $n$ and $k$. (The reference
# set is the same for every row, so its own randomness cancels from such comparisons and is not
# included.) For a share, such as the confident share, the mean of the draws *is* the share of all
# $n$ images, so there the standard error belongs to the all-$n$ number directly.
#
# **Few draws, rough errors.** With $k = 4$ draws a standard error rests on 3 degrees of freedom: it is itself a
# rough estimate (it can easily come out half or twice the spread it estimates), and "two standard errors" either
# side of one row's mean covers only about 86% of the time, not 95% (Student's $t$ with 3 degrees of freedom puts
# the 95% point at 3.18). The difference of two rows has 6 degrees of freedom, and its 95% point is 2.45
# standard errors; the verdicts below use that.


# %%
#| export
#: the statistics whose spread over disjoint draws :func:`compare` reports
DRAW_KEYS = ("frechet_distance", "confident_share")


def compare(features_and_probs: tuple[np.ndarray, np.ndarray], reference_features: np.ndarray,
            draws: int = 4, threshold: float = 0.9) -> dict:  # fmt: skip
    """Metrics of one set of n images against the reference features, and their spread over disjoint draws.

    ``features_and_probs`` is :func:`classify`'s ``(features, probabilities)`` of the images. Every statistic
    is computed on all n images. With ``draws`` = k > 1, the statistics of :data:`DRAW_KEYS` are also computed
    on k disjoint consecutive slices of m = n // k images (each against the whole reference set; n % k images
    are left out of the draws): ``draw_mean[key]`` and ``draw_se[key]`` are their mean and its standard error,
    s / √k with s the standard deviation of the k values; ``draw_values[key]`` holds the values.
    """
    features, probs = features_and_probs
    n, m = len(features), len(reference_features)
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= n // 2:
        raise ValueError(f"draws must be an integer from 1 to n // 2 = {n // 2} (each draw needs 2 images), "
                         f"got {draws!r}")  # fmt: skip

    def point(f, p) -> dict:
        return {
            "frechet_distance": features_distance(f, reference_features),
            **class_statistics(p, threshold),
        }

    result = {"n": n, "reference_n": m, **point(features, probs), "draws": draws, "draw_n": n // draws}
    if draws > 1:
        size = n // draws
        parts = [
            point(features[i * size : (i + 1) * size], probs[i * size : (i + 1) * size]) for i in range(draws)
        ]
        values = {key: [part[key] for part in parts] for key in DRAW_KEYS}
        result["draw_values"] = values
        result["draw_mean"] = {key: float(np.mean(v)) for key, v in values.items()}
        result["draw_se"] = {key: float(np.std(v, ddof=1) / np.sqrt(draws)) for key, v in values.items()}
    return result


def draw_difference(a: dict, b: dict, key: str = "frechet_distance") -> tuple[float, float]:
    """(mean of a's draws − mean of b's draws, standard error of that difference) for ``key``.

    ``a`` and ``b`` are :func:`compare` results with the same number of draws of the same size; the standard
    error is √(se_a² + se_b²). A difference within about two standard errors is not shown to be real.
    """
    for name, r in (("a", a), ("b", b)):
        if "draw_mean" not in r or key not in r["draw_mean"]:
            raise ValueError(f"{name} has no draws of {key!r}: compare it with draws > 1")
    if (a["draws"], a["draw_n"]) != (b["draws"], b["draw_n"]):
        raise ValueError(
            f"a and b must be compared at the same draws: {a['draws']} × {a['draw_n']} vs {b['draws']} × {b['draw_n']}"
        )
    difference = a["draw_mean"][key] - b["draw_mean"][key]
    return difference, float(np.hypot(a["draw_se"][key], b["draw_se"][key]))


def baseline_images(n: int, seed: int = 0, dataset: str = "mnist") -> dict[str, torch.Tensor]:
    """The floor and ceilings at ``n`` samples: real training images, the same blurred, uniform noise.

    ``dataset`` is ``"mnist"`` (rows named "real digits (floor)", "blurred digits") or ``"fashion-mnist"``
    (chapter 15: "real images (floor)", "blurred images"); the floor's row always comes first.
    """
    from torchvision.transforms.functional import gaussian_blur

    from ddpm_lib.data import load_dataset

    train = load_dataset(dataset, "train", verbose=False).tensors[0]
    if not 2 <= n <= len(train):
        raise ValueError(f"n must be between 2 and {len(train)} for the real baselines, got {n}")
    generator = torch.Generator().manual_seed(seed)
    real = train[torch.randperm(len(train), generator=generator)[:n]]
    what = "digits" if dataset == "mnist" else "images"
    return {
        f"real {what} (floor)": real,
        f"blurred {what}": gaussian_blur(real, kernel_size=7, sigma=1.5),
        "uniform noise": torch.rand(real.shape, generator=generator) * 2 - 1,
    }


def evaluate_images(classifier: nn.Module, images: dict[str, torch.Tensor], reference: torch.Tensor,
                    draws: int = 4) -> dict[str, dict]:  # fmt: skip
    """:func:`compare` each named set of images with ``reference`` (e.g. the held-out digits), in ``draws`` draws."""
    reference_features, _ = classify(classifier, check_images(reference, "reference"))
    return {
        name: compare(classify(classifier, check_images(x, name)), reference_features, draws)
        for name, x in images.items()
    }


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table of :func:`evaluate_images` results, one row per set of images.

    "per draw" is the mean ± standard error of the Fréchet distance over the row's k disjoint draws of m images;
    the confident share's ± is its standard error from the same draws.
    """

    def spread(result: dict, key: str, fmt: str, value: float | None = None) -> str:
        value = result["draw_mean"][key] if value is None else value
        se = result.get("draw_se", {}).get(key)
        return format(value, fmt) + (f" ± {format(se, fmt)}" if se is not None else "")

    header = f"{'images':<24} {'n':>5}  {'Fréchet distance':>16}  {'per draw: k × m, mean ± s.e.':<30} " \
             f"{'confident ≥0.9 ± s.e.':<22} {'classes':>7}  {'entropy bits':>12} {'IS':>5}"  # fmt: skip
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        per_draw = (
            f"{r['draws']} × {r['draw_n']}: {spread(r, 'frechet_distance', '.2f')}"
            if "draw_mean" in r
            else "-"
        )
        confident = spread(r, "confident_share", ".1%", r["confident_share"])
        lines.append(
            f"{name:<24} {r['n']:>5}  {r['frechet_distance']:>16.2f}  {per_draw:<30} {confident:<22} "
            f"{r['classes_present']:>4}/10  {r['class_entropy_bits']:>12.2f} {r['inception_score']:>5.2f}"
        )
    return "\n".join(lines)


# %% [markdown]
# The baselines at the chapter's sample size, each in `eval_draws` disjoint draws:

# %%
n_eval, k_draws = PROFILE.eval_samples, PROFILE.eval_draws
baselines = evaluate_images(classifier, baseline_images(n_eval), heldout_images, k_draws)
print(
    f"{n_eval} samples per row in {k_draws} draws of {n_eval // k_draws}; reference: {len(heldout_images)} held-out digits"
)
print(format_table(baselines))
floor_row = baselines["real digits (floor)"]
floor = floor_row["frechet_distance"]
assert (
    floor < baselines["blurred digits"]["frechet_distance"] < baselines["uniform noise"]["frechet_distance"]
)
assert floor_row["draw_mean"]["frechet_distance"] > floor  # fewer images per draw: more bias
assert (
    abs(floor_row["draw_mean"]["confident_share"] - floor_row["confident_share"]) < 1e-12
)  # a share: the same

# %% [markdown]
# The floor is far from zero at small $n$, and its draws, at a quarter of the size, sit higher still: that
# is the estimator's bias, not a difference between the sets. Compare a model with the floor *at the same
# n and draw size*, never with zero, and never compare numbers computed at different $n$.
#
# And the percentile bootstrap, on the same floor: resample the $n$ real digits with replacement a few dozen
# times and read off the middle 95% of the recomputed distances. The resamples sit above the estimate; with
# a few hundred samples the whole "interval" does, and it does not contain the number it claims to describe.

# %%
rng = np.random.default_rng(0)
floor_features, _ = classify(classifier, baseline_images(n_eval)["real digits (floor)"])
heldout_features = real_features
resampled = [
    features_distance(floor_features[rng.integers(0, n_eval, n_eval)], heldout_features) for _ in range(40)
]
low, middle, high = np.percentile(resampled, [2.5, 50, 97.5])
print(f"floor estimate at n = {n_eval}: {floor:.2f}")
print(f"percentile bootstrap: median {middle:.2f}, 'interval' [{low:.2f}, {high:.2f}]; "
      f"contains the estimate: {'yes' if low <= floor <= high else 'no'}")  # fmt: skip
print(
    f"disjoint draws: {k_draws} × {n_eval // k_draws}, "
    f"{floor_row['draw_mean']['frechet_distance']:.2f} ± {floor_row['draw_se']['frechet_distance']:.2f}"
)
assert middle > floor  # resampling with replacement adds bias: the resamples sit above the estimate

# %% [markdown]
# ## 7. The shipped model: `sample()` vs `sample_clip()`
#
# Sampling dominates the cost of evaluation: every digit needs 1000 network calls. `generate`
# (`ddpm_lib.generation`, met in [chapter 06](06_sampling.py)) runs them on the fastest device this machine has, in the precision it
# computes fast in — on a CPU with bfloat16 instructions, bfloat16 autocast: 1.4–1.6× faster, pixels within 0.003
# of float32, as `benchmarks/sampling_speed.py` measures — and in batches of
# 256, batch $i$ seeded with `seed + i`. In the full profile the next cell takes 8 to 12 minutes on a 2-core
# laptop (2 × 256 digits × 1,000 network calls, 1 to 1.4 ms per image per call; the cell prints both); a progress
# bar follows each chain.

# %%
start = time.perf_counter()
samples = {
    name: generate(model, scheduler, n_eval, sampler=name, seed=1, progress=PROFILE.progress)
    for name in ("ddpm", "clip")
}
elapsed = time.perf_counter() - start
print(f"sampled 2 × {n_eval} digits in {elapsed:.0f} s "
      f"({1000 * elapsed / (2 * n_eval * scheduler.num_timesteps):.2f} ms per image per network call)")  # fmt: skip
results = evaluate_images(
    classifier,
    {"sample() (ddpm)": samples["ddpm"], "sample_clip()": samples["clip"], **baseline_images(n_eval)},
    heldout_images,
    k_draws,
)
print(format_table(results))

# %% [markdown]
# Which sampler won, and by how much? The difference of the two rows' draw means, in units of its standard
# error; a difference under Student's 95% point (2.45 standard errors for two rows of 4 draws: 6 degrees of
# freedom) is one these draws cannot tell from chance.


# %%
def verdict(a: str, b: str, key: str, lower_is_better: bool, fmt: str) -> str:
    """One line: which of rows ``a`` and ``b`` of ``results`` scored better on ``key``, by how much, how surely."""
    difference, se = draw_difference(results[a], results[b], key)
    better, worse = (a, b) if (difference < 0) == lower_is_better else (b, a)
    ratio = abs(difference) / se if se > 0 else float("inf")
    critical = scipy.stats.t.ppf(0.975, 2 * (results[a]["draws"] - 1))  # Student's t, 95%, both rows' draws
    resolved = "a real difference" if ratio > critical else "within the noise of these draws"
    return (
        f"{key}: {better} beats {worse} by {format(abs(difference), fmt)} "
        f"(± {format(se, fmt)}, {ratio:.1f} standard errors, 95% needs {critical:.2f}: {resolved})"
    )


fd_verdict = verdict("sample_clip()", "sample() (ddpm)", "frechet_distance", True, ".2f")
confidence_verdict = verdict("sample_clip()", "sample() (ddpm)", "confident_share", False, ".1%")
print(fd_verdict)
print(confidence_verdict)
assert "beats" in fd_verdict and "beats" in confidence_verdict

# %% [markdown]
# A look at the samples with the classifier's verdict (red: confidence below 0.9) keeps the numbers
# honest — and the class histograms show whether every digit is drawn.

# %%
show = min(n_eval, 32)
_, clip_probs = classify(classifier, samples["clip"][:show])
fig, axes = plt.subplots(2, show // 2, figsize=(show * 0.45, 2.4))
for ax, image, p in zip(axes.flat, samples["clip"][:show], clip_probs, strict=False):
    ax.imshow(to_image(image), cmap="gray")
    ax.set_title(f"{p.argmax()}: {p.max():.2f}", fontsize=7, color="black" if p.max() >= 0.9 else "red")
    ax.axis("off")
fig.suptitle("sample_clip() samples: predicted digit and confidence", fontsize=9)
fig.tight_layout()
save_figure(fig, "07_classified_samples")
plt.show()

fig, ax = plt.subplots(figsize=(6, 2.6))
width = 0.28
for k, (name, color) in enumerate(
    [("real digits (floor)", "gray"), ("sample() (ddpm)", "tab:orange"), ("sample_clip()", "tab:blue")]
):
    ax.bar(
        np.arange(10) + (k - 1) * width,
        np.array(results[name]["class_counts"]) / n_eval,
        width,
        color=color,
        label=name,
    )
ax.axhline(0.1, color="black", lw=0.8, ls=":")
ax.set_xticks(range(10))
ax.set_xlabel("predicted digit")
ax.set_ylabel("share of samples")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
print({name: results[name]["class_counts"] for name in ("sample() (ddpm)", "sample_clip()")})

# %% [markdown]
# The course also ships a **class-conditional** model ([chapter 04](04_unet.py), section 12; [chapter 10](10_guidance.py) is about it): told which
# digit to draw, it gets the class right by construction, so its samples — asked for every digit in turn, which
# matches the training data's balance — measure only how well it draws. Same sampler, same $n$, same seeds
# (4 to 6 minutes on a 2-core laptop in the full profile, with a progress bar):

# %%
conditional_model, conditional_scheduler, conditional_info = load_pretrained(
    "ddpm_mnist_cond", device=hw.device
)
start = time.perf_counter()
conditional_samples = generate(
    conditional_model, conditional_scheduler, n_eval, sampler="ddpm", seed=1, progress=PROFILE.progress
)
print(f"sampled {n_eval} class-conditional digits in {time.perf_counter() - start:.0f} s")
results["class-conditional (ddpm)"] = evaluate_images(
    classifier, {"class-conditional (ddpm)": conditional_samples}, heldout_images, k_draws
)["class-conditional (ddpm)"]
print(f"class-conditional model: {conditional_info['summary']}")
print(
    format_table(
        {k: results[k] for k in ("sample() (ddpm)", "class-conditional (ddpm)", "real digits (floor)")}
    )
)
if n_eval >= 100:  # the bar of this course, on enough samples to judge it
    assert results["class-conditional (ddpm)"]["confident_share"] >= 0.9

# %% [markdown]
# ## 8. Does more training help?
#
# The shipped run saved its EMA weights at several steps along the way, through both of its parts ([chapter 05](05_training.py),
# section 7; stored in float16 to keep the package small; the last one is the shipped model). Scoring each with
# the same metric, at the same $n$ and seed, shows how quality grows with training — and where it stops growing.
# The error bars
# are the standard errors of the confident share from the disjoint draws; at this $n$ the draws are too
# small for a useful Fréchet distance each, so that panel shows the all-$n$ distance next to the floor.
# In the full profile the next cell takes about 8 minutes on a 2-core laptop (six snapshots, 64 digits through
# 1,000 steps each); a progress bar counts the snapshots, and a second one follows each chain.

# %%
snapshots = snapshot_paths()[-PROFILE.eval_snapshots :] if PROFILE.eval_snapshots else snapshot_paths()
n_snap = PROFILE.eval_snapshot_samples
curve = []
start = time.perf_counter()
for step, path in tqdm(snapshots, desc="snapshots", disable=not PROFILE.progress):
    snapshot_model, snapshot_scheduler, _ = load_denoiser(path, device=hw.device)
    images = generate(
        snapshot_model, snapshot_scheduler, n_snap, sampler="clip", seed=2, progress=PROFILE.progress
    )
    r = evaluate_images(classifier, {f"step {step}": images}, heldout_images, k_draws)[f"step {step}"]
    curve.append((step, r))
    print(f"step {step:5d}: Fréchet distance {r['frechet_distance']:.3f}, confident {r['confident_share']:.0%} "
          f"± {r['draw_se']['confident_share']:.0%}, classes {r['classes_present']}/10")  # fmt: skip
snapshot_floor = evaluate_images(classifier, {"floor": baseline_images(n_snap)["real digits (floor)"]},
                                 heldout_images, k_draws)["floor"]  # fmt: skip
print(f"floor at n = {n_snap}: {snapshot_floor['frechet_distance']:.3f}; "
      f"{len(curve)} snapshots scored in {time.perf_counter() - start:.0f} s")  # fmt: skip

# %%
steps = [s for s, _ in curve]
fd = np.array([r["frechet_distance"] for _, r in curve])
confident = np.array([r["confident_share"] for _, r in curve])
confident_se = np.array([r["draw_se"]["confident_share"] for _, r in curve])
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
ax1.plot(steps, fd, marker="o", label="sample_clip()")
ax1.axhline(snapshot_floor["frechet_distance"], color="gray", ls="--", label="real-vs-real floor")
ax1.set_xlabel("training step")
ax1.set_ylabel("Fréchet distance")
ax1.set_yscale("log")
ax1.legend(fontsize=8)
ax2.errorbar(steps, confident, yerr=confident_se, marker="o", capsize=3, label="sample_clip() ± s.e.")
ax2.axhline(snapshot_floor["confident_share"], color="gray", ls="--", label="real digits")
ax2.set_xlabel("training step")
ax2.set_ylabel("confident share (≥ 0.9)")
ax2.set_ylim(0, 1.02)
ax2.legend(fontsize=8)
fig.suptitle(f"quality along the shipped run ({n_snap} samples per point)", fontsize=10)
fig.tight_layout()
save_figure(fig, "07_quality_vs_steps")
plt.show()
print("steps:", steps, "Fréchet:", fd.round(2).tolist(), "confident:", confident.round(3).tolist())
assert all(r["n"] == n_snap for _, r in curve) and np.all(np.isfinite(confident_se))
assert steps == sorted(steps) and steps[-1] == provenance["steps"]  # the last point is the shipped model

# %% [markdown]
# Quality climbs steeply over the first 16,000 steps; after that the points move up and down within their noise.
# The shipped point, the last, is not the best of them: in the printed numbers its confident share is the lowest
# since step 8,000 and its Fréchet distance is worse than step 24,000's. But at 64 samples a point's confident
# share has a standard error of several points (the error bars), and a distance from 64 samples varies by more
# than 20 from draw to draw (section 7's draws of 64), so these late differences are not shown to be real.
# Telling such late points apart takes many more samples. At $n = 500$ (`python -m ddpm_lib evaluate --weights ddpm_mnist --n 500 --sampler clip
# --seed 0`, 10 to 25 minutes on 2 CPU cores) the shipped 36,000-step weights score 92.2% ± 1.1% confident with a
# Fréchet distance 1.29× the floor, and the same run's weights at step 24,000 scored 91.6% and 1.40× by that
# command: the extra third of the training bought a small gain in the distance and none that this $n$ can
# resolve in the confident share.
#
# ## 9. From the command line
#
# The same evaluation, for the shipped weights or any checkpoint of `python -m ddpm_lib train`:
#
# ```bash
# python -m ddpm_lib evaluate --n 500                              # the shipped class-conditional model
# python -m ddpm_lib evaluate --n 500 --weights ddpm_mnist         # the unconditional one, by its recipe (ch. 10)
# python -m ddpm_lib evaluate --n 500 --weights ddpm_mnist --sampler clip --seed 0   # section 8's command
# python -m ddpm_lib evaluate --checkpoint runs/demo/checkpoints/last.pt --n 500 --json runs/demo/eval.json
# python -m ddpm_lib evaluate --samples my_samples.pt              # a saved (N, 1, 28, 28) tensor in [-1, 1]
# ```
#
# Without `--checkpoint` it scores the shipped class-conditional model (every digit in turn), the best the
# course ships. It prints the table above (with the floor and ceilings at the same $n$, and `--draws`
# disjoint draws, 4 by default, for the standard errors), how far the sampler's draws sit above the floor's
# in standard errors, a verdict line for the course's bar (≥ 90% confident samples, every digit present),
# and writes everything as JSON. `python -m ddpm_lib train-classifier` retrains the evaluation classifier.
#
# ## Summary
#
# - A classifier trained on the domain replaces Inception: its penultimate activations are the
#   features, its probabilities the verdicts. Ours reaches ≥ 98% on the 500 held-out digits.
# - The **Fréchet distance** compares Gaussian fits of features; it is biased at small $n$, so it is only
#   meaningful next to the **real-vs-real floor** at the same $n$ (and the blurred / noise ceilings).
# - **Confidence**, the **class histogram** and its **entropy**, and the **IS analogue** say *what* is wrong:
#   unrecognisable samples, or missing digits.
# - How sure a number is: split the samples into $k$ disjoint draws and report the mean of the statistic over
#   them with its standard error. With $k = 4$ that error is rough (3 degrees of freedom), and a difference of
#   two rows' draw means is shown to be real only beyond Student's 95% point, 2.45 standard errors of the difference. A percentile bootstrap of a biased statistic is no substitute: its
#   resamples add bias, and its "interval" can miss the estimate altogether.
#
# ## Exercises

# %% [markdown]
# :::{exercise} 7.1 · ★☆☆ · How confident is confident?
# :nonumber:
#
# Write `confident_share_at(probs, threshold)`: the share of rows of `probs` (N, 10) whose largest
# probability is at least `threshold`. The check prints it at thresholds 0.5, 0.9 and 0.99 for the held-out
# digits and for `samples["clip"]`. Where is the gap between real and generated largest, and why is 0.9 a
# reasonable place for the course's bar? (Think about what each threshold lets through.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def confident_share_at(probs: np.ndarray, threshold: float) -> float:
    ### BEGIN SOLUTION
    return float((np.asarray(probs).max(1) >= threshold).mean())
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 7.1
_, generated_probs = classify(classifier, samples["clip"])
for threshold in (0.5, 0.9, 0.99):
    real_share, generated_share = (
        confident_share_at(real_probs, threshold),
        confident_share_at(generated_probs, threshold),
    )
    print(f"threshold {threshold}: held-out {real_share:.1%}, sample_clip() {generated_share:.1%}")
assert confident_share_at(np.eye(10), 0.9) == 1.0
assert confident_share_at(np.full((4, 10), 0.1), 0.5) == 0.0
assert abs(confident_share_at(real_probs, 0.9) - class_statistics(real_probs)["confident_share"]) < 1e-12
### BEGIN HIDDEN TESTS
assert confident_share_at(np.array([[0.9] + [0.1 / 9] * 9]), 0.9) == 1.0
assert confident_share_at(real_probs, 0.99) <= confident_share_at(real_probs, 0.5)
### END HIDDEN TESTS
print("Exercise 7.1 passed")

# %% [markdown]
# **Your answer (7.1, 1 point, graded by hand).** Where is the gap between real and generated largest, and why is 0.9 a reasonable bar?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# At 0.5 almost everything passes: a blurry digit that is "probably a 3" clears it, so
# real and generated look alike. The gap opens at high thresholds, where only clean, unambiguous
# digits pass. At 0.99 even real digits start to fail (an odd 4 or 9 is not 99% anything), so the
# threshold would judge the classifier's calibration as much as the samples. 0.9 sits where nearly all
# real digits still pass (the floor row's share) while unclear samples do not.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: the gap opens at high thresholds, where only unambiguous digits pass; at 0.99 even real digits fail (the threshold judges calibration), at 0.5 nearly everything passes; 0.9 keeps nearly all real digits and rejects unclear samples.
# - **½ point**: the location of the gap right, or the argument for 0.9, not both.
# - **0**: restates the printed shares.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 7.2 · ★★☆ · Diagonal Gaussians
# :nonumber:
#
# When both covariances are diagonal, the matrix square root is element-wise and the distance becomes
# $\lVert\mu_1-\mu_2\rVert^2 + \sum_k (\sigma_{1,k} - \sigma_{2,k})^2$. Write `frechet_diagonal(mu1, var1, mu2, var2)`
# taking the *variances* as vectors. The check compares it with `frechet_distance`. Why would the diagonal
# version be a poor metric for images? (Hint: what does it ignore about strokes?)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def frechet_diagonal(mu1, var1, mu2, var2) -> float:
    ### BEGIN SOLUTION
    mu1, var1, mu2, var2 = (np.asarray(a, dtype=np.float64) for a in (mu1, var1, mu2, var2))
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 7.2
rng = np.random.default_rng(0)
mu_a, mu_b, var_a, var_b = (
    rng.normal(size=5),
    rng.normal(size=5),
    rng.uniform(0.5, 2, 5),
    rng.uniform(0.5, 2, 5),
)
expected = frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
assert abs(frechet_diagonal(mu_a, var_a, mu_b, var_b) - expected) < 1e-9
### BEGIN HIDDEN TESTS
assert frechet_diagonal(mu_a, var_a, mu_a, var_a) == 0.0
### END HIDDEN TESTS
print("Exercise 7.2 passed")

# %% [markdown]
# **Your answer (7.2, 1 point, graded by hand).** Why would the diagonal version be a poor metric for images?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# The diagonal version sees each feature on its own: its mean and its spread. It ignores
# the covariances, i.e. which features occur *together*. A stroke is exactly such a co-occurrence (this
# edge detector fires with that one, along a line), so a generator whose features have the right
# marginals but the wrong combinations — broken strokes, parts of a 3 glued to parts of a 7 — would
# score as well as a perfect one. The full Fréchet distance sees those combinations in its trace term.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: it ignores covariances, i.e. which features occur together; strokes are such co-occurrences, so wrong combinations with right marginals (broken strokes, mixed digits) would score as well as a perfect generator.
# - **½ point**: says it ignores correlations, without saying what that misses in images.
# - **0**: objects to speed or numerical issues only.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 7.3 · ★★★ · Mini-project: the kernel distance (KID), with its standard error
# :nonumber:
#
# The Fréchet distance is biased at small $n$, which is why this chapter compares it only at equal draw sizes.
# The *Kernel Inception Distance* {cite:p}`binkowski2018kid` avoids the bias: it is an **unbiased** estimate of
# the squared maximum mean discrepancy between the two feature distributions, with the polynomial kernel
# $k(a, b) = (a^\top b / D + 1)^3$:
#
# $$ \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)}\sum_{i \ne j} k(x_i, x_j) + \frac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j)
#    - \frac{2}{nm}\sum_{i,j} k(x_i, y_j). $$
#
# 1. Write `kernel_distance(features_x, features_y)`. Mind the $i \ne j$: keeping the diagonal terms
#    $k(x_i, x_i)$ gives the biased estimate, which is never negative; the unbiased one can be.
# 2. Write `kernel_distance_draws(features_x, features_y, draws)`: split `features_x` into `draws` disjoint
#    consecutive slices of `len(features_x) // draws` rows, compute the kernel distance of each slice against
#    all of `features_y`, and return the mean and its standard error (standard deviation with `ddof=1`,
#    divided by $\sqrt{\text{draws}}$) as two floats. Because the estimate is unbiased, the mean estimates the
#    same number whatever the slice size.
# 3. Score `samples["ddpm"]`, `samples["clip"]` and the floor's real digits against the held-out digits with
#    it. Does the kernel distance agree with section 7's Fréchet verdict? Is the floor's kernel distance
#    within its standard error of 0?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def kernel_distance(features_x: np.ndarray, features_y: np.ndarray) -> float:
    ### BEGIN SOLUTION
    x, y = np.asarray(features_x, np.float64), np.asarray(features_y, np.float64)
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    ### END SOLUTION


def kernel_distance_draws(features_x: np.ndarray, features_y: np.ndarray, draws: int) -> tuple[float, float]:
    ### BEGIN SOLUTION
    size = len(features_x) // draws
    values = [kernel_distance(features_x[i * size : (i + 1) * size], features_y) for i in range(draws)]
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(draws))
    ### END SOLUTION


### BEGIN SOLUTION
# Part 3, and a model answer. The kernel distance of each sampler and of the floor, with standard errors:
kid_rows = {
    name: kernel_distance_draws(classify(classifier, images)[0], real_features, k_draws)
    for name, images in (
        ("sample() (ddpm)", samples["ddpm"]),
        ("sample_clip()", samples["clip"]),
        ("real digits (floor)", baseline_images(n_eval)["real digits (floor)"]),
    )
}
for name, (mean, se) in kid_rows.items():
    print(f"{name:<22} kernel distance {mean:8.4f} ± {se:.4f}")
# Read it as section 7 read the Fréchet distance: the difference of the two samplers against the combined
# standard error. Where both metrics resolve a difference they point the same way (both measure how far the
# generated features sit from the real ones); where the Fréchet verdict was "within the noise", the kernel
# distance usually is too. Unlike the Fréchet floor, the real digits' kernel distance is within a couple of
# standard errors of 0: the estimate is unbiased, so a perfect generator scores 0 on average at any n.
### END SOLUTION

# %% jupyter={"source_hidden": true}
# Check 7.3
x_small, y_small = np.random.default_rng(5).normal(size=(5, 3)), np.random.default_rng(6).normal(size=(4, 3))
by_hand = (
    sum((x_small[i] @ x_small[j] / 3 + 1) ** 3 for i in range(5) for j in range(5) if i != j) / 20
    + sum((y_small[i] @ y_small[j] / 3 + 1) ** 3 for i in range(4) for j in range(4) if i != j) / 12
    - 2 * sum((x_small[i] @ y_small[j] / 3 + 1) ** 3 for i in range(5) for j in range(4)) / 20
)
assert abs(kernel_distance(x_small, y_small) - by_hand) < 1e-9  # the diagonal terms must be left out
assert kernel_distance(x_small, x_small) < 0  # unbiased: with the diagonal kept it would be exactly 0
real_a, real_b = real_features[::2], real_features[1::2]
noise_features, _ = classify(classifier, baseline_images(50)["uniform noise"])
same, different = kernel_distance(real_a, real_b), kernel_distance(noise_features, real_b)
print(f"KID real vs real: {same:.4f}; noise vs real: {different:.4f}")
assert abs(same) < 0.1 * different
mean, se = kernel_distance_draws(noise_features, real_b, 2)
assert (
    abs(
        mean
        - np.mean(
            [kernel_distance(noise_features[:25], real_b), kernel_distance(noise_features[25:], real_b)]
        )
    )
    < 1e-9
)
### BEGIN HIDDEN TESTS
assert abs(kernel_distance(real_b, real_a) - same) < 1e-9
values = [kernel_distance(noise_features[i * 12 : (i + 1) * 12], real_b) for i in range(4)]
mean, se = kernel_distance_draws(noise_features, real_b, 4)
assert abs(mean - np.mean(values)) < 1e-9 and abs(se - np.std(values, ddof=1) / 2) < 1e-9
assert set(kid_rows) == {"sample() (ddpm)", "sample_clip()", "real digits (floor)"}
### END HIDDEN TESTS
print("Exercise 7.3 passed")
