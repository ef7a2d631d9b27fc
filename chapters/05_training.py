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
# # 05 · Training
#
# We have a noise schedule ([chapter 01](01_noise_schedule.py)), a way to noise any digit to any $t$ ([chapter 02](02_forward_process.py)), the objective that
# the theory of [chapter 03](03_theory.py) arrives at, and a denoiser network ([chapter 04](04_unet.py)). Training teaches the network to
# predict the noise that was added.
#
# **After this chapter you can**
#
# - write the DDPM training objective and one optimisation step (AdamW, gradient clipping, OneCycleLR);
# - explain why an exponential moving average (EMA) of the weights gives better samples, and pick its decay;
# - run the loop, read its loss curve and watch samples improve;
# - train from the command line with `python -m ddpm_lib train`, with checkpoints you can resume;
# - load the weights the course ships, trained with the same command;
# - train a network to predict $\varepsilon$, $v$ or $x_0$ instead, and say which errors each choice of target weighs.
#
# Symbols are those of the [notation](../notation.md) page.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from ddpm_lib import checkpoint
from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import convert_prediction, q_sample
from ddpm_lib.generation import generate
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.precision import compute
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.result_cache import cached
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.unet import Unet

torch.manual_seed(0)
# the device and the precision this machine trains and samples fast in (chapter 04, section 11)
hw = compute()
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
images, labels = load_mnist("train").tensors
print(f"profile: {PROFILE.name}; training digits: {len(images)}")
print(f"device and precision: {hw.describe()}")

# %% [markdown]
# ## 1. The objective
#
# [Chapter 02](02_forward_process.py) gave us $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$. DDPM {cite:p}`ho2020ddpm`
# trains a network $\varepsilon_\theta(x_t, t)$ to recover $\varepsilon$ from $x_t$ and $t$. The objective comes from
# the variational bound on $-\log p_\theta(x_0)$ of diffusion models {cite:p}`sohl2015deep`: each term of the bound
# is a KL divergence between two Gaussians, which reduces to a weighted squared error between the true and the
# predicted noise ([chapter 03](03_theory.py) derives it). Dropping the weights gives the *simplified* objective, which
# {cite:t}`ho2020ddpm` found to train better:
#
# $$ L_{\text{simple}} = \mathbb E_{t \sim \mathcal U\{0..T-1\},\ x_0,\ \varepsilon \sim \mathcal N(0, I)}
#    \left\| \varepsilon - \varepsilon_\theta\!\left(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t\right) \right\|^2 . $$
#
# One Monte-Carlo sample of $t$ and $\varepsilon$ per image is enough: over a batch and many steps, the
# average covers every $t$. Note $t$ is drawn from **all** of $0..T-1$ — dropping $t = 0$ is a classic bug.

# %%
#| default_exp training
#| export
import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.diffusion import prediction_of, prediction_target, q_sample
from ddpm_lib.precision import DTYPES
from ddpm_lib.schedule import NoiseSchedule


# %%
#| export
def ddpm_loss(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    part: slice | None = None,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
) -> torch.Tensor:
    r"""The simplified DDPM objective (Ho et al. 2020, eq. 14) on one batch.

    L = mean over the batch of w_t ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² / (C·H·W),
    with t ~ U{0, …, T−1} and ε ~ N(0, I) drawn per image from ``generator`` (on x0's device).
    ``x0`` is (B, C, H, W) in [-1, 1]. ``weighting="uniform"``: w_t = 1 (DDPM); ``"min_snr"``:
    w_t = min(SNR_t, γ) / SNR_t (Hang et al. 2023; chapter 11). ``part`` computes the loss on a slice of
    the batch only, after drawing t and ε for all of it (data-parallel training, chapter 14, gives each
    process one slice). ``labels`` (B,) trains a class-conditional model ε_θ(x_t, t, y) (chapter 04,
    section 12); each label is replaced by −1 ("no label") with probability ``label_dropout``, drawn from
    ``generator`` after t and ε (chapter 10 needs it). Returns a float32 scalar.

    A network built to predict v or x_0 (``model.config["prediction"]``, section 8) is compared with that
    target instead of ε (:func:`ddpm_lib.diffusion.prediction_target`); ``"min_snr"`` then weights it so that
    every target gets the same weight per noise level in terms of x_0's error: min(SNR_t, γ) / (SNR_t + 1)
    for v, min(SNR_t, γ) for x_0.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(LOSS_WEIGHTINGS)}; got {weighting!r}")
    if not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout}")
    if labels is not None and labels.shape != (x0.shape[0],):
        raise ValueError(
            f"labels must have shape ({x0.shape[0]},), one per image of x0; got {tuple(labels.shape)}"
        )
    t = torch.randint(0, scheduler.num_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if labels is not None and label_dropout > 0:
        dropped = torch.rand(x0.shape[0], generator=generator, device=x0.device) < label_dropout
        labels = torch.where(dropped, torch.full_like(labels, -1), labels.to(x0.device))
    if part is not None:
        x0, t, noise = x0[part], t[part], noise[part]
        labels = None if labels is None else labels[part]
    x_t = q_sample(scheduler, x0, t, noise)
    output = (model(x_t, t) if labels is None else model(x_t, t, labels)).float()
    target_kind = prediction_of(model)
    alpha_bar = scheduler.get_bar_alpha(t).to(x0.device)
    target = prediction_target(target_kind, x0.float(), noise.float(), alpha_bar)
    if weighting == "uniform":
        return F.mse_loss(output, target)
    per_image = (output - target).pow(2).flatten(1).mean(1)
    snr = scheduler.snr.to(x0.device)[t]
    # the squared error of ε (of v) is SNR (SNR + 1) times that of the x_0 it implies
    clamped = snr.clamp(max=min_snr_gamma)
    weight = {"eps": clamped / snr, "v": clamped / (snr + 1), "x0": clamped}[target_kind]
    return (per_image * weight).mean()


#: ``ddpm_loss``'s weightings w_t: 1 (DDPM), or min(SNR_t, γ) / SNR_t for ε (chapter 11; section 8 for v and x_0)
LOSS_WEIGHTINGS = ("uniform", "min_snr")


# %% [markdown]
# Before training, what loss should we expect? A network that always answers $0$ scores
# $\mathbb E\|\varepsilon\|^2/d = 1$. A freshly initialised U-Net — [chapter 04](04_unet.py)'s default, built here with the
# arguments the reference passes spelled out — starts near there.

# %%
model = Unet(
    timesteps=1000, time_embedding_dim=64, in_channels=1, out_channels=1, base_dim=32, dim_mults=[2, 4]
)
n_parameters = sum(p.numel() for p in model.parameters())
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    initial_loss = ddpm_loss(model, scheduler, images[:256], generator).item()
    zero_loss = ddpm_loss(lambda x, t: torch.zeros_like(x), scheduler, images[:256], generator).item()
print(
    f"U-Net with {n_parameters:,} parameters; loss before training {initial_loss:.3f}; "
    f"loss of always predicting 0: {zero_loss:.3f}"
)
assert abs(zero_loss - 1) < 0.02
assert 0.5 < initial_loss < 5

# %% [markdown]
# ## 2. One optimisation step
#
# The reference implementation uses AdamW {cite:p}`loshchilov2019adamw` at learning rate $10^{-3}$ with a
# **one-cycle** schedule {cite:p}`smith2019superconvergence`: the rate climbs for the first 25% of the run from
# $\text{max\_lr}/25$ to $\text{max\_lr}$, then anneals along a cosine to almost zero. The warm-up keeps Adam's
# early, poorly estimated second moments from taking huge steps; the long anneal lets the weights settle. PyTorch's
# `OneCycleLR` also cycles AdamW's $\beta_1$ against the rate (its default `cycle_momentum=True`: from 0.95 down to
# 0.85 while the rate climbs, and back), as the reference's does; we keep it. We add **gradient clipping** at norm 1
# {cite:p}`pascanu2013difficulty`, a cheap guard against the occasional huge gradient from a batch of nearly
# noise-free images (small $t$): the target noise still has unit variance, but its share of $x_t$,
# $\sqrt{1-\bar\alpha_t}$, is about 0.01 at $t = 0$, so the network must pick it out of an almost clean image.


# %%
#| export
def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW as in the reference implementation (weight decay: PyTorch's default)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.25
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle schedule: warm up for ``pct_start`` of the run, then cosine-anneal (as the reference)."""
    # A warm-up that ends at step 0 (e.g. --steps 10 with the quick preset's 0.1) divides by zero inside
    # OneCycleLR: end it half a step later.
    if abs(pct_start * total_steps - 1) < 1e-9:
        pct_start = 1.5 / total_steps
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start, anneal_strategy="cos"
    )


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the weights were not updated with it."""


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    grad_clip: float | None = 1.0,
    precision: str = "float32",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
    part: slice | None = None,
    mean_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One step: loss, backward, gradient clipping, optimiser and LR-scheduler step.

    ``precision`` ``"bfloat16"`` or ``"float16"`` runs the forward pass under that autocast (the loss stays
    float32; ``ddpm_lib.precision`` says which the hardware computes in fast); float16 needs a ``grad_scaler``
    (``torch.amp.GradScaler``), which scales the loss so that small gradients survive float16's range.
    ``weighting``, ``min_snr_gamma``, ``labels``, ``label_dropout`` and ``part`` are passed to :func:`ddpm_loss`.
    ``mean_loss``, if given, turns this process's loss into the loss reported and checked (chapter 14: the mean
    over all processes). Raises :class:`NonFiniteLossError` *before* touching the weights if that loss is not
    finite. Returns the loss, the gradient norm before clipping and the learning rate used.
    """
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    dtype = DTYPES[precision]  # bfloat16 -> torch.bfloat16; float32 -> None: no autocast
    with torch.autocast(device_type=x0.device.type, dtype=dtype, enabled=dtype is not None):
        loss = ddpm_loss(
            model, scheduler, x0, generator, weighting, min_snr_gamma, part=part, labels=labels,
            label_dropout=label_dropout,
        )  # fmt: skip
    reported = loss.detach() if mean_loss is None else mean_loss(loss.detach())
    if not torch.isfinite(reported):
        raise NonFiniteLossError(f"loss is {reported.item()}")
    optimizer.zero_grad(set_to_none=True)
    if grad_scaler is None:
        loss.backward()
    else:
        grad_scaler.scale(loss).backward()
        grad_scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    max_norm = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if grad_scaler is None:
        optimizer.step()
    else:
        grad_scaler.step(optimizer)  # skips the step when float16 overflowed, and lowers the scale
        grad_scaler.update()
    if lr_scheduler is not None:
        lr_scheduler.step()
    return {"loss": reported.item(), "grad_norm": grad_norm.item(), "lr": lr}


# %% [markdown]
# The schedule over a run of 1,000 steps, and one step on a fixed batch (the loss on *that* batch must
# go down — the smallest test that the gradient points the right way):

# %%
probe = torch.nn.Parameter(torch.zeros(1))
probe_optimizer = make_optimizer(torch.nn.ParameterList([probe]))
probe_schedule = make_lr_scheduler(probe_optimizer, max_lr=1e-3, total_steps=1000)
lrs = []
for _ in range(1000):
    lrs.append(probe_optimizer.param_groups[0]["lr"])
    probe_optimizer.step()
    probe_schedule.step()
peak = max(range(1000), key=lrs.__getitem__)
print(f"lr starts at {lrs[0]:.1e}, peaks at {lrs[peak]:.1e} at step {peak}, ends at {lrs[-1]:.1e}")
assert math.isclose(lrs[0], 1e-3 / 25, rel_tol=1e-6) and peak in (248, 249) and lrs[-1] < 1e-7

fig, ax = plt.subplots(figsize=(5, 2.5))
ax.plot(lrs)
ax.set_xlabel("step")
ax.set_ylabel("learning rate")
ax.set_title("OneCycleLR, max_lr 1e-3, 25% warm-up")
plt.show()

# %%
step_model = Unet(
    timesteps=1000, time_embedding_dim=64, in_channels=1, out_channels=1, base_dim=32, dim_mults=[2, 4]
)
step_optimizer = make_optimizer(step_model)
batch = images[:64]


def fixed_batch_loss(net):
    with torch.no_grad():
        return ddpm_loss(net.eval(), scheduler, batch, torch.Generator().manual_seed(7)).item()


before = fixed_batch_loss(step_model)
for _ in range(3):
    stats = train_step(step_model, step_optimizer, None, scheduler, batch, torch.Generator().manual_seed(7))
after = fixed_batch_loss(step_model)
print(f"loss on a fixed batch: {before:.4f} -> {after:.4f} after 3 steps; last step {stats}")
assert after < before

# %% [markdown]
# ## 3. An exponential moving average of the weights
#
# SGD's iterates bounce around a minimum; the learning rate sets how far. Averaging the last few
# thousand iterates {cite:p}`polyak1992averaging` cancels much of that bounce, and a diffusion sampler — which
# calls the network 1,000 times and compounds its errors — is sensitive to it (DDPM samples from such an average
# too {cite:p}`ho2020ddpm`). The EMA keeps a second copy of the
# weights and after every step moves it a little towards the live weights:
#
# $$ \theta_{\text{EMA}} \leftarrow d\,\theta_{\text{EMA}} + (1-d)\,\theta . $$
#
# A step $k$ steps ago carries weight $(1-d)\,d^k$, so the average spans about $1/(1-d)$ steps. That
# fixes the decay for a short run: with $d = 0.9999$ (common for week-long runs) a 3,000-step run would
# still be mostly its random initialisation; $d = 0.999$ averages roughly the last 1,000 steps. A
# **warm-up** $d_k = \min\!\left(d, \frac{1+k}{10+k}\right)$ lets the average forget the early weights quickly.

# %%
for decay in (0.99, 0.999, 0.9999):
    share_first_half = decay**1500  # weight left on everything before step 1500 of a 3000-step run
    print(
        f"decay {decay}: window ~{1 / (1 - decay):,.0f} steps; "
        f"weight still on the first half of a 3,000-step run: {share_first_half:.1%}"
    )
assert 0.999**1500 < 0.25 < 0.9999**1500


# %%
#| export
class EMA:
    r"""Exponential moving average of a model's weights: θ_ema ← d·θ_ema + (1 − d)·θ.

    With ``warmup`` the decay of update k (0-based) is min(d, (1 + k) / (10 + k)), so the average
    forgets the random initialisation quickly. Buffers (e.g. BatchNorm statistics) are copied, not
    averaged. ``ema.model`` is the averaged copy, kept in eval mode and without gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for average, live in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(live.detach(), 1.0 - decay)  # average + (1 - d)(live - average)
        for average, live in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(live)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]


# %%
live = torch.nn.Linear(1, 1, bias=False)
torch.nn.init.zeros_(live.weight)
ema = EMA(live, decay=0.9, warmup=False)
with torch.no_grad():
    live.weight.fill_(1.0)
for _ in range(10):
    ema.update(live)
print(
    f"after 10 updates towards 1.0 with d=0.9: {ema.model.weight.item():.4f} (1 - 0.9**10 = {1 - 0.9**10:.4f})"
)
assert math.isclose(ema.model.weight.item(), 1 - 0.9**10, rel_tol=1e-6)


# %% [markdown]
# ## 4. The loop
#
# The loop draws batches in an order fixed by the seed — epoch $e$ uses the permutation seeded by
# $(\text{seed}, e)$ — so that a run interrupted at step $k$ and resumed from a checkpoint sees exactly
# the batches an uninterrupted run would. All randomness of the objective ($t$ and $\varepsilon$) comes
# from one `torch.Generator` whose state the checkpoint saves. Logging, checkpoints and progress bars
# are the caller's business, through the `on_step` callback.
#
# Two more hooks, `part` and `mean_loss`, are for [chapter 14](14_scaling_out.py), where several processes share each batch: a
# process trains on its `part` of every batch (after drawing $t$ and $\varepsilon$ for the whole batch, so the
# random numbers do not depend on how many processes there are) and reports the `mean_loss` over all of them.
# With one process both stay `None` and change nothing. This loop is the only training loop of the course:
# `python -m ddpm_lib train` runs it, on one process or many.


# %%
#| export
def batch_stream(
    images: torch.Tensor, batch_size: int, seed: int, start_step: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(step, batch)`` forever from ``start_step`` on, in an order fixed by ``seed``.

    Epoch e shuffles with a generator seeded by (seed, e); the last incomplete batch is dropped.
    """
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} training images")
    step, epoch, order = start_step, None, None
    while True:
        this_epoch, position = divmod(step, steps_per_epoch)
        if this_epoch != epoch:
            epoch = this_epoch
            order = torch.randperm(
                len(images), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
            )
        yield step, images[order[position * batch_size : (position + 1) * batch_size]]
        step += 1


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler: NoiseSchedule,
    images: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    generator: torch.Generator,
    ema: EMA | None = None,
    start_step: int = 0,
    grad_clip: float | None = 1.0,
    precision: str = "float32",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    part: slice | None = None,
    mean_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Train from ``start_step`` up to ``steps`` optimisation steps; return the steps completed.

    ``images`` (N, C, H, W) live on the training device; ``labels`` (N,), if given, are their classes
    (a class-conditional model; see :func:`ddpm_loss` for ``label_dropout``). After each step, ``ema`` is updated and
    ``on_step(completed_steps, stats)`` is called; ``should_stop()`` is asked before each step
    (for a clean stop on Ctrl-C). A non-finite loss raises :class:`NonFiniteLossError` naming the step.
    ``part`` and ``mean_loss`` are the hooks of data-parallel training (chapter 14), ``precision`` and
    ``grad_scaler`` those of reduced precision, all passed to :func:`train_step`; a float32 process on its own leaves
    them at their defaults.
    """
    completed = start_step
    positions = torch.arange(len(images), device=images.device)  # the batch's rows of images and labels
    for step, rows in batch_stream(positions, batch_size, seed, start_step):
        if step >= steps or (should_stop is not None and should_stop()):
            break
        try:
            stats = train_step(
                model, optimizer, lr_scheduler, scheduler, images[rows], generator, grad_clip, precision, weighting,
                min_snr_gamma, labels=None if labels is None else labels[rows], label_dropout=label_dropout,
                part=part, mean_loss=mean_loss, grad_scaler=grad_scaler,
            )  # fmt: skip
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"{error} at step {step + 1}; the weights of step {step} are kept"
            ) from None
        if ema is not None:
            ema.update(model)
        completed = step + 1
        if on_step is not None:
            on_step(completed, stats)
    return completed


# %% [markdown]
# ## 5. A live run
#
# Now the real thing: a few minutes of training, on the device and in the precision the first cell chose (`hw`).
# Every `train_grid_every` steps we keep a copy of the **EMA** weights; the cell after draws digits from each copy
# with [chapter 06](06_sampling.py)'s `generate` (1,000 reverse steps): read that chapter for how it works.
#
# The next two cells take about 5 minutes on a 2-core laptop (full profile: 600 steps of batch 128, then three grids
# of 16 digits through 1,000 steps each; each cell prints its time); a progress bar counts the training steps. The
# run is one function, which returns what it produced. (`cached` only calls it: when the course's maintainers
# re-execute the chapters for the book, it hands back a kept result while the code that produced it is unchanged.)


# %%
def live_run(steps: int, batch_size: int, keep_every: int) -> dict:
    """Train the course's U-Net for ``steps`` steps: the loss of every step, and the EMA weights every ``keep_every``
    steps and at the end."""
    torch.manual_seed(0)
    model = Unet(
        timesteps=1000, time_embedding_dim=64, in_channels=1, out_channels=1, base_dim=32, dim_mults=[2, 4]
    ).to(hw.device)
    optimizer = make_optimizer(model, lr=1e-3)
    ema = EMA(model, decay=0.999)
    history, kept = [], {}
    bar = tqdm(total=steps, desc="training", disable=not PROFILE.progress)

    def log_and_keep(step, stats):
        history.append({"step": step, **stats})
        bar.update(1)
        if step % keep_every == 0 or step == steps:
            kept[step] = {name: value.cpu().clone() for name, value in ema.model.state_dict().items()}

    started = time.perf_counter()
    completed = train(
        model, optimizer, make_lr_scheduler(optimizer, max_lr=1e-3, total_steps=steps), scheduler,
        images.to(hw.device), steps=steps, batch_size=batch_size, seed=0,
        generator=torch.Generator(device=hw.device).manual_seed(0), ema=ema, on_step=log_and_keep,
        precision=hw.precision, grad_scaler=hw.grad_scaler(),
    )  # fmt: skip
    bar.close()
    return {
        "completed": completed,
        "history": history,
        "kept": kept,
        "seconds": time.perf_counter() - started,
    }


live = cached("chapter 05, the live run", live_run, PROFILE.train_steps, PROFILE.train_batch_size,
              PROFILE.train_grid_every)  # fmt: skip
history = live["history"]
losses = torch.tensor([h["loss"] for h in history])
first, last = (
    losses[: max(1, len(losses) // 10)].mean().item(),
    losses[-max(1, len(losses) // 10) :].mean().item(),
)
print(
    f"{live['completed']} steps of batch {PROFILE.train_batch_size} in {live['seconds'] / 60:.1f} min; "
    f"loss {first:.3f} (first 10%) -> {last:.3f} (last 10%)"
)
assert live["completed"] == PROFILE.train_steps and last < first

# %%
started = time.perf_counter()
grids = {}
for step, state in live["kept"].items():
    snapshot = Unet(
        timesteps=1000, time_embedding_dim=64, in_channels=1, out_channels=1, base_dim=32, dim_mults=[2, 4]
    ).to(hw.device)
    snapshot.load_state_dict(state)
    grids[step] = generate(snapshot, scheduler, PROFILE.grid_samples, seed=0)
print(f"{len(grids)} grids of {PROFILE.grid_samples} digits in {time.perf_counter() - started:.0f} s")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot([h["step"] for h in history], losses, lw=0.8)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title("live run: training loss")
plt.show()

fig, axes = plt.subplots(len(grids), PROFILE.grid_samples, figsize=(1.2 * PROFILE.grid_samples, 1.3 * len(grids)),
                         squeeze=False)  # fmt: skip
for row, (step, samples) in enumerate(sorted(grids.items())):
    for column, image in enumerate(samples):
        axes[row, column].imshow(to_image(image), cmap="gray")
        axes[row, column].axis("off")
    axes[row, 0].set_title(f"step {step}", fontsize=8, loc="left")
fig.tight_layout()
plt.show()
print("grids at steps", sorted(grids), "- each", tuple(next(iter(grids.values())).shape))
assert all(g.shape == (PROFILE.grid_samples, 1, 28, 28) and g.abs().max() <= 1 for g in grids.values())

# %% [markdown]
# Early grids are noise-like blobs; after a few hundred steps strokes appear, but this short CPU run does not
# make convincing digits. That takes tens of thousands of steps: the weights the course ships trained for 36,000,
# about two and a half hours on two CPU cores (section 7 prints their record). It is not the only way, though.
# The recipe here is the reference's, on the course's default network; chapters [07](07_evaluation.py)–[10](10_guidance.py) add a way to measure
# samples, a sampling chain 40 times shorter and a label to condition on, and [chapter 11](11_putting_together.py) puts them together
# with a few levers of this chapter's loop (a larger learning rate, a shorter EMA, a loss weighting): digits that
# pass the course's bar after about five minutes of training on the same CPU.
#
# ## 6. From the command line, with checkpoints you can trust
#
# `python -m ddpm_lib train` wraps this loop for real runs: a progress bar, a run folder with
# `config.json`, `metrics.jsonl` (step, loss, lr, gradient norm, images/s), `loss_curve.png`,
# `samples/step_NNNNNN.png` and `checkpoints/`. Checkpoints are plain tensors loaded with
# `weights_only=True`, written atomically (temporary file, then rename), and hold everything needed to
# continue — model, EMA, optimiser, LR schedule, step and RNG states — so an interrupted run resumed with
# `--resume` reaches the same weights, bit for bit, as one that never stopped. Ctrl-C saves a
# checkpoint before exiting. `--wandb` also logs to Weights & Biases (offline by default: no account needed).
#
# Here is that promise, tested: a tiny run straight through, and the same run interrupted with Ctrl-C
# (SIGINT) as soon as its first checkpoint appears, then resumed.

# %%
workdir = Path(tempfile.mkdtemp(prefix="ddpm-ch05-"))
tiny = ["--steps", "40", "--batch-size", "16", "--base-dim", "8", "--dim-mults", "2", "--n-samples", "1",
        "--eval-every", "0", "--checkpoint-every", "5", "--no-progress"]  # fmt: skip
command = [sys.executable, "-m", "ddpm_lib", "train", *tiny]

straight = subprocess.run([*command, "--out", str(workdir / "straight")], capture_output=True, text=True)
assert straight.returncode == 0, straight.stderr
print(straight.stdout.strip().splitlines()[-1])

interrupted = subprocess.Popen(
    [*command, "--out", str(workdir / "interrupted")], stdout=subprocess.PIPE, text=True
)
while not (workdir / "interrupted" / "checkpoints" / "last.pt").exists() and interrupted.poll() is None:
    time.sleep(0.05)
interrupted.send_signal(signal.SIGINT)
interrupted.communicate()
resumed = subprocess.run(
    [*command, "--out", str(workdir / "interrupted"), "--resume"], capture_output=True, text=True
)
assert resumed.returncode == 0, resumed.stderr
print("run folder:", sorted(p.name for p in (workdir / "straight").iterdir()))

# %%
straight_state = checkpoint.load(workdir / "straight" / "checkpoints" / "last.pt", "run")
resumed_state = checkpoint.load(workdir / "interrupted" / "checkpoints" / "last.pt", "run")
same = all(
    torch.equal(straight_state["ema"]["model"][k], v) for k, v in resumed_state["ema"]["model"].items()
)
print(f"steps: {straight_state['step']} and {resumed_state['step']}; identical EMA weights: {same}")
assert straight_state["step"] == resumed_state["step"] == 40 and same

# %% [markdown]
# ## 7. The shipped weights
#
# A convincing model needs thousands of steps — too long to wait for in a chapter. The course ships the
# EMA weights of a run of the command above (with a few of [chapter 11](11_putting_together.py)'s levers, self-attention at 7×7 from
# [chapter 04](04_unet.py) and the $v$ target of section 8), with a provenance record: the exact command, seed, data, steps,
# wall time and machine. The run came in two parts. The first trained 24,000 steps from scratch; the second,
# the command printed below, continued it for 12,000 more with `--init-from`, which starts from trained weights
# (the first part's snapshot at step 24,000, shipped beside the weights) and runs a fresh one-cycle schedule at a
# quarter of the first part's peak learning rate over the added steps. The record keeps the first part's command
# under `initialised_from`, and the wall time printed is both parts together. Re-run the printed command to
# reproduce the weights from that snapshot, or the two commands in turn to reproduce them from scratch.

# %%
shipped_model, shipped_scheduler, provenance = load_pretrained()
for key in ("command", "steps", "training_wall_time_s", "final_loss_mean_last_200_steps", "machine"):
    print(f"{key:>32}: {provenance[key]}")
shipped_samples = generate(shipped_model, shipped_scheduler, PROFILE.grid_samples, seed=0)

columns = min(8, PROFILE.grid_samples)
rows = math.ceil(PROFILE.grid_samples / columns)
fig, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.2 * rows), squeeze=False)
for ax, image in zip(axes.flat, shipped_samples, strict=False):
    ax.imshow(to_image(image), cmap="gray")
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "05_shipped_samples")
plt.show()

# %%
background_real = (images < -0.5).float().mean().item()
background_generated = (shipped_samples < -0.5).float().mean().item()
print(
    f"share of dark (background) pixels: real digits {background_real:.2f}, samples {background_generated:.2f}"
)
assert abs(background_generated - background_real) < 0.1  # digit-like images, not noise (noise: ~0.3)

# %% [markdown]
# [Chapter 07](07_evaluation.py) measures how good these digits are with an MNIST classifier.
#
# ## 8. What the network predicts: $\varepsilon$, $v$ or $x_0$
#
# [Chapter 02](02_forward_process.py) (section 6) showed that, given $x_t$, the noise $\varepsilon$, the clean image $x_0$ and the velocity
# $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$ determine one another. A network can be trained to
# output any of them: `Unet(prediction="v")` (or `python -m ddpm_lib train --prediction v`) records the choice,
# `ddpm_loss` compares the output with that target, and every sampler converts the output to $\hat\varepsilon$ in
# one place (`predict_noise`, [chapter 06](06_sampling.py)), so nothing else changes.
#
# What does change is *which errors the loss cares about*. Errors convert with the same coefficients as the
# targets: if the $\hat x_0$ a network implies is off by $\delta$, its $\hat\varepsilon$ is off by
# $-\sqrt{\mathrm{SNR}_t}\,\delta$ and its $\hat v$ by $-\delta/\sqrt{1-\bar\alpha_t}$. So the same squared error on each
# target weighs the error in $x_0$ by
#
# $$ \underbrace{\mathrm{SNR}_t}_{\varepsilon} , \qquad \underbrace{\mathrm{SNR}_t + 1}_{v} , \qquad \underbrace{1}_{x_0} . $$
#
# Predicting $\varepsilon$ spends the loss on the nearly clean end ($\mathrm{SNR}_0 \approx 10^4$) and almost nothing on
# the noisy end; predicting $x_0$ does the opposite; $v$ follows $\varepsilon$ where the SNR is high and $x_0$ where it
# is low. Min-SNR-$\gamma$ weighting ([chapter 11](11_putting_together.py)) caps the weight at $\gamma$ whatever the target: `ddpm_lib` divides
# by each target's own factor, so with `weighting="min_snr"` all three put the weight $\min(\mathrm{SNR}_t, \gamma)$ on
# the error in $x_0$.

# %%
snr = scheduler.snr.double()
implied = {
    "ε": snr,
    "v": snr + 1,
    "x₀": torch.ones_like(snr),
    "any target, min-SNR (γ = 5)": snr.clamp(max=5.0),
}
fig, ax = plt.subplots(figsize=(6.5, 3.2))
for (name, weight), style in zip(implied.items(), ["-", "--", ":", "-."], strict=True):
    ax.plot(range(len(snr)), weight, style, label=name)
ax.set_yscale("log")
ax.set_xlabel("t")
ax.set_ylabel("weight on the error in $x_0$")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "05_prediction_weights")
plt.show()
print(f"SNR at t = 0: {snr[0]:.0f}; at t = 999: {snr[-1]:.1e}; v's weight never drops below 1")
assert (implied["v"] >= 1).all() and snr[0] > 1e3 and snr[-1] < 1e-3

# %% [markdown]
# **Three short runs.** The same network, optimiser, batches and noise — a U-Net with two units per block and in
# the bottleneck, AdamW at $2 \times 10^{-3}$ with a 10% warm-up, an EMA of decay 0.995, batch 64 (the settings
# [chapter 11](11_putting_together.py) arrives at, without its labels), and min-SNR weighting with $\gamma = 5$, so that all three weigh the
# error in $x_0$ alike, by $\min(\mathrm{SNR}_t, 5)$ — trained to predict $\varepsilon$, $v$ and $x_0$. The only
# difference is what the last layer is asked to output. We measure each one's error in $x_0$ per noise level on
# held-out digits (one common currency, through [chapter 02](02_forward_process.py)'s `convert_prediction`), and draw digits from each with
# 25-step DDPM. In the full profile these are three runs of 800 steps of batch 64: the next two cells take about
# 16 minutes on a 2-core CPU with bfloat16 instructions (the second prints each run's time);
# [chapter 11](11_putting_together.py)'s benchmark compares longer runs.

# %%
heldout_digits = load_mnist("heldout", verbose=False).tensors[0][: PROFILE.prediction_loss_digits]
probe_t = [0, 10, 50, 100, 200, 400, 600, 800, 999]


def train_target(target: str, steps: int) -> dict:
    """The quick recipe's network trained for ``steps`` steps to predict ``target``; its EMA weights and time."""
    torch.manual_seed(0)
    net = Unet(units_per_block=2, mid_units=2, prediction=target).to(hw.device)
    optimizer = make_optimizer(net, lr=2e-3)
    ema = EMA(net, decay=0.995)
    started = time.perf_counter()
    train(
        net, optimizer, make_lr_scheduler(optimizer, 2e-3, steps, pct_start=0.1), scheduler, images.to(hw.device),
        steps=steps, batch_size=PROFILE.quick_batch_size, seed=0,
        generator=torch.Generator(device=hw.device).manual_seed(0), ema=ema, weighting="min_snr",
        precision=hw.precision, grad_scaler=hw.grad_scaler(),
    )  # fmt: skip
    return {"ema": ema.model.state_dict(), "seconds": time.perf_counter() - started}


x0_errors, target_samples = {}, {}
noise = torch.randn(heldout_digits.shape, generator=torch.Generator().manual_seed(1))
for target in ("eps", "v", "x0"):
    run = cached(f"chapter 05, predicting {target}", train_target, target, PROFILE.prediction_steps)
    net = Unet(units_per_block=2, mid_units=2, prediction=target).to(hw.device).eval()
    net.load_state_dict(run["ema"])
    errors = []
    with torch.no_grad():
        for t in probe_t:
            x_t = q_sample(scheduler, heldout_digits, t, noise)
            output = net(x_t.to(hw.device), torch.full((len(x_t),), t, device=hw.device)).cpu()
            x0_hat = convert_prediction(output, x_t, float(scheduler.alpha_bars64[t]), target, "x0")
            errors.append((x0_hat - heldout_digits).pow(2).mean().item())
    x0_errors[target] = errors
    target_samples[target] = generate(net, scheduler, 8, sampler="ddpm", steps=25, seed=0)
    print(f"{target:>3}: {PROFILE.prediction_steps} steps in {run['seconds']:.0f} s")

print(f"\nmean squared error of x̂_0 on {len(heldout_digits)} held-out digits")
print("    t " + " ".join(f"{t:>7d}" for t in probe_t))
for target, errors in x0_errors.items():
    print(f"{target:>5} " + " ".join(f"{e:7.4f}" for e in errors))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3), gridspec_kw={"width_ratios": [1.1, 1.6]})
for target, errors in x0_errors.items():
    axes[0].plot(probe_t, errors, "o-", ms=3, label=target)
axes[0].set_yscale("log")
axes[0].set_xlabel("t")
axes[0].set_ylabel(r"MSE of $\hat x_0$")
axes[0].legend(fontsize=8)
strip = torch.cat([torch.cat(list(target_samples[target][:, 0]), dim=1) for target in target_samples], dim=0)
axes[1].imshow(to_image(strip[None]), cmap="gray")
axes[1].set_yticks([14 + 28 * i for i in range(3)], list(target_samples))
axes[1].set_xticks([])
axes[1].set_title("25-step DDPM samples", fontsize=9)
fig.tight_layout()
save_figure(fig, "05_prediction_targets")
plt.show()
worst_gap = max(
    abs(x0_errors["v"][i] - x0_errors["eps"][i]) / x0_errors["eps"][i] for i in range(len(probe_t))
)
print(f"largest relative gap between ε's and v's x̂_0 error over these t: {worst_gap:.0%}")

# %% [markdown]
# The three curves share one shape — the error in $x_0$ grows with the noise, and at $t = 999$ the best any network
# can do is the average digit. Where they part is the network's job at each end: to output a clean image at
# $t \approx 0$, an $x_0$-predicting network must copy its input through every layer, while an $\varepsilon$-predicting one
# need only find a little noise; at $t \approx T$ the $\varepsilon$-predicting network's $\hat x_0$ divides by
# $\sqrt{\bar\alpha_t} \approx 0.006$, so a small error in $\hat\varepsilon$ becomes a large one in $\hat x_0$ ([chapter 09](09_cosine_schedule.py) meets
# that with the cosine schedule). The $v$ target keeps both ends well scaled. Printed above is what this
# profile's short runs show; whether a target gives better digits per CPU-minute is a question of longer runs,
# which [chapter 11](11_putting_together.py)'s benchmark of denoisers answers.
#
# ## Summary
#
# - The DDPM objective is a mean squared error between the noise that was added and the noise the
#   network predicts, at a uniformly random $t$; a network that predicts $0$ scores $1$.
# - One step: AdamW, gradient clipping at norm 1, and a one-cycle learning rate (25% warm-up, cosine anneal).
# - Sample from an EMA of the weights; its window $\approx 1/(1-d)$ steps should be a fraction of the run
#   ($d = 0.999$ for a few thousand steps), with a warm-up so the average forgets the initialisation.
# - `python -m ddpm_lib train` runs the loop with atomic, resumable checkpoints; `ddpm_lib.pretrained`
#   loads the weights the course ships, with their provenance.
# - A network may predict $\varepsilon$, $v$ or $x_0$ (`Unet(prediction=...)`); the same squared error then weighs the
#   error in $x_0$ by $\mathrm{SNR}_t$, $\mathrm{SNR}_t + 1$ or 1. Min-SNR weighting makes the three alike, and the samplers
#   convert every target to $\hat\varepsilon$ in one place.
# - A few minutes of this recipe on a CPU give strokes, not digits; [chapter 11](11_putting_together.py) shows the levers that give digits
#   in about five minutes.
#
# ## Exercises
#
# :::{exercise} 5.1 · ★☆☆ · Where is the loss?
# :nonumber:
#
# The loss of section 1 averages over all $t$. Write `loss_at(model, scheduler, x0, t, noise)`: the mean squared
# error of `model`'s noise prediction when every image of `x0` is noised to the same timestep `t` with `noise`
# (the shipped model predicts $v$: turn its output into $\hat\varepsilon$ with [chapter 02](02_forward_process.py)'s `convert_prediction`
# and `prediction_of(model)`, as section 8 does). Before you run the check, which do you expect to be harder for the shipped model of section 7, predicting the
# noise at $t = 5$ or at $t = 900$? The check prints both. Explain the result: why is the noise hardest to
# predict when there is least of it?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def loss_at(model, scheduler, x0: torch.Tensor, t: int, noise: torch.Tensor) -> float:
    ### BEGIN SOLUTION
    timesteps = torch.full((len(x0),), t)
    with torch.no_grad():
        x_t = q_sample(scheduler, x0, timesteps, noise)
        output = model(x_t, timesteps)
    prediction = convert_prediction(
        output, x_t, float(scheduler.alpha_bars64[t]), prediction_of(model), "eps"
    )
    return (prediction - noise).pow(2).mean().item()
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 5.1
x0_check = images[:128]
noise_check = torch.randn(x0_check.shape, generator=torch.Generator().manual_seed(1))
zero_model = lambda x, t: torch.zeros_like(x)  # noqa: E731
assert (
    abs(loss_at(zero_model, scheduler, x0_check, 500, noise_check) - noise_check.pow(2).mean().item()) < 1e-6
)
early, late = (loss_at(shipped_model, shipped_scheduler, x0_check, t, noise_check) for t in (5, 900))
print(f"shipped model, noise-prediction MSE: t = 5: {early:.4f}; t = 900: {late:.4f}")
assert early > late
### BEGIN HIDDEN TESTS
with torch.no_grad():
    x_300 = q_sample(shipped_scheduler, x0_check, torch.full((128,), 300), noise_check)
    eps_300 = convert_prediction(
        shipped_model(x_300, torch.full((128,), 300)), x_300, float(shipped_scheduler.alpha_bars64[300]),
        prediction_of(shipped_model),
    )  # fmt: skip
    expected = (eps_300 - noise_check).pow(2).mean().item()
assert abs(loss_at(shipped_model, shipped_scheduler, x0_check, 300, noise_check) - expected) < 1e-6
### END HIDDEN TESTS
print("Exercise 5.1 passed")

# %% [markdown]
# **Your answer (5.1, 1 point, graded by hand).** Why is the noise hardest to predict when there is least of it?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# At t = 900 the image is almost all noise: x_t ≈ ε, so "predict the noise" is nearly "copy
# the input", an easy task with a small loss. At t = 5 the noise is a faint perturbation (its scale
# sqrt(1 − ᾱ_5) is about 0.03) on a nearly clean digit, and the network must tell it apart from the digit's
# own strokes and edges, pixel by pixel: the loss is large. Yet an error there barely matters for the image,
# since the clean image x̂_0 moves by the ε-error times sqrt((1 − ᾱ_t)/ᾱ_t), about 0.03 at t = 5 —
# [chapter 11](11_putting_together.py) turns this into a loss weighting.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: at t = 900, x_t ≈ ε and predicting the noise is nearly copying the input; at t = 5 the faint noise (scale ≈ 0.03) must be told apart from the digit's own edges; and an ε-error there barely moves x̂₀.
# - **½ point**: the comparison of the two noise levels right, without why it matters little for the image, or the other way round.
# - **0**: expects the loss to follow the amount of noise, or restates the printed numbers.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 5.2 · ★★☆ · How far back does the average look?
# :nonumber:
#
# Write `weight_on_last(decay, n)`: the share of the EMA's total weight that falls on the last `n`
# updates (ignore warm-up and the initial weights' share). Then use it to find the smallest decay from
# $\{0.99, 0.995, 0.999, 0.9995, 0.9999\}$ that puts **at most** half of the weight on the last 500 steps.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def weight_on_last(decay: float, n: int) -> float:
    ### BEGIN SOLUTION
    return 1 - decay**n
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 5.2
assert math.isclose(weight_on_last(0.5, 1), 0.5)
assert math.isclose(weight_on_last(0.999, 1000), 1 - 0.999**1000)
smallest = min(d for d in (0.99, 0.995, 0.999, 0.9995, 0.9999) if weight_on_last(d, 500) <= 0.5)
print(f"smallest decay with at most half the weight on the last 500 steps: {smallest}")
assert smallest == 0.999
### BEGIN HIDDEN TESTS
assert math.isclose(weight_on_last(0.9, 10), 1 - 0.9**10)
### END HIDDEN TESTS
print("Exercise 5.2 passed")

# %% [markdown]
# :::{exercise} 5.3 · ★★★ · v-prediction
# :nonumber:
#
# Instead of the noise, a network can predict the *velocity* $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# {cite:p}`salimans2022progressive`. Write `v_target(alpha_bar, x0, noise)`, and `epsilon_from_v(alpha_bar, x_t, v)`
# and `x0_from_v(alpha_bar, x_t, v)` that turn a predicted $v$ back into the noise and the clean image — with them,
# a $v$-network can be wrapped so that every sampler of this course uses it unchanged. (`alpha_bar` is a tensor
# that broadcasts against the images.) Why is $\hat x_0$ from $v$ better behaved than from $\varepsilon$ near
# $t = T-1$? (Compare the factors by which an error in $\hat v$ and an error in $\hat\varepsilon$ enter $\hat x_0$.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def v_target(alpha_bar: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    ### END SOLUTION


def epsilon_from_v(alpha_bar: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v
    ### END SOLUTION


def x0_from_v(alpha_bar: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 5.3
g = torch.Generator().manual_seed(0)
x0_check, noise_check = images[:8], torch.randn((8, 1, 28, 28), generator=g)
t_check = torch.randint(0, 1000, (8,), generator=g)
alpha_bar = scheduler.alpha_bars[t_check].reshape(-1, 1, 1, 1)
x_t_check = alpha_bar.sqrt() * x0_check + (1 - alpha_bar).sqrt() * noise_check
v = v_target(alpha_bar, x0_check, noise_check)
assert torch.allclose(epsilon_from_v(alpha_bar, x_t_check, v), noise_check, atol=1e-5)
assert torch.allclose(x0_from_v(alpha_bar, x_t_check, v), x0_check, atol=1e-5)
### BEGIN HIDDEN TESTS
one = torch.tensor(1.0)
assert torch.equal(v_target(one, x0_check, noise_check), noise_check)  # no noise added: v is the noise
### END HIDDEN TESTS
print("Exercise 5.3 passed")

# %% [markdown]
# **Your answer (5.3, 1 point, graded by hand).** Why is x̂₀ from v better behaved than from ε near t = T − 1?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# x̂_0 = √ᾱ x_t − √(1 − ᾱ) v̂: an error δ in v̂ moves x̂_0 by √(1 − ᾱ) δ, never more than δ.
# From ε, x̂_0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ: an error δ in ε̂ moves x̂_0 by √((1 − ᾱ)/ᾱ) δ = δ/√SNR, which at
# t = T − 1 of the linear schedule (ᾱ ≈ 4·10⁻⁵) is about 157 δ. Near pure noise the ε-network must be
# almost perfect for its x̂_0 to mean anything; the v-network need not.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: an error δ in v̂ moves x̂₀ by √(1 − ᾱ) δ ≤ δ, one in ε̂ by δ/√SNR, about 157 δ at t = T − 1 of the linear schedule.
# - **½ point**: the two factors right, without the size near pure noise, or the conclusion without the factors.
# - **0**: no comparison of how the errors enter x̂₀.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
