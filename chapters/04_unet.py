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
# # 04 · The U-Net denoiser
#
# [Chapter 02](02_forward_process.py) showed how to turn a digit $x_0$ into a noisy $x_t$ in one jump. Training ([chapter 05](05_training.py))
# asks a network to look at $x_t$ and the timestep $t$ and say which noise $\varepsilon$ was added:
#
# $$ \varepsilon_\theta(x_t, t) \approx \varepsilon, \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon . $$
#
# The output has the shape of the input, the job depends on $t$ (at $t = 10$ the image is almost
# clean; at $t = 900$ it is almost all noise), and the answer at a pixel depends on its
# neighbourhood at several scales. A **U-Net** {cite:p}`ronneberger2015unet` fits all three, and DDPM
# {cite:p}`ho2020ddpm` uses one. This chapter builds the one the reference implementation uses — ShuffleNet v2
# units, BatchNorm, a learned time table — piece by piece, measures it, and then picks the course's default
# from those measurements.
#
# **After this chapter you can**
#
# - embed a timestep with sinusoids + an MLP or with a learned table, and say what each gives up;
# - build the ShuffleNet v2 units (channel split, depthwise branch, channel shuffle) and a dense
#   alternative, and assemble encoder, bottleneck and decoder blocks with skip connections;
# - read a network's shapes and parameter counts level by level (28×28 → 14×14 → 7×7 and back);
# - explain, with a measurement, why BatchNorm is a trap in a denoiser and what GroupNorm costs;
# - condition the network on a class label the way it is conditioned on time;
# - use `ddpm_lib.unet.Unet`, the class this chapter promotes into the course package.
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

import copy
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import convert_prediction, prediction_of, q_sample
from ddpm_lib.plotting import save_figure
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.schedule import LinearBetaScheduler

torch.manual_seed(0)
print(f"profile: {PROFILE.name}")

# %% [markdown]
# The promoted code starts here. Cells that begin with `#| export` are copied into
# `ddpm_lib/unet.py` by `python tools/promote.py`; this chapter is their only source.

# %%
#| default_exp unet
#| export
import itertools
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.diffusion import PREDICTIONS
from ddpm_lib.errors import UsageError

# %% [markdown]
# ## 1. Telling the network the time
#
# One set of weights has to denoise at every noise level, so $t$ is an input. A bare integer in
# $0..999$ is a poor input for a network (one number, huge range), so we first turn it into a vector
# of $d$ features, the **time embedding**. DDPM borrows the Transformer's sinusoidal position
# embedding {cite:p}`vaswani2017attention`: with $h = d/2$ frequencies $\omega_k = 10000^{-k/h}$,
#
# $$ \operatorname{emb}(t) = \big[\sin(t\omega_0), \dots, \sin(t\omega_{h-1}),\ \cos(t\omega_0), \dots, \cos(t\omega_{h-1})\big]. $$
#
# Fast frequencies tell neighbouring steps apart; slow ones say roughly where in $0..T-1$ we are.


# %%
#| export
def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of timesteps (Vaswani et al., 2017; used by DDPM).

    With h = dim / 2 and ω_k = max_period^(−k/h) for k = 0..h−1:

        emb(t) = [sin(t ω_0), …, sin(t ω_{h−1}), cos(t ω_0), …, cos(t ω_{h−1})]

    ``t``: shape (B,), integer or float; returns float32 of shape (B, dim). ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"dim must be even (a sine and a cosine per frequency), got {dim}")
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) / half * torch.arange(half, dtype=torch.float32, device=t.device)
    )
    angles = t.to(torch.float32)[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


# %%
T, EMBEDDING_DIM = 1000, 64
steps = torch.arange(T)
sinusoids = sinusoidal_embedding(steps, EMBEDDING_DIM)
assert sinusoids.shape == (T, EMBEDDING_DIM)
assert torch.allclose(sinusoids[:, :32] ** 2 + sinusoids[:, 32:] ** 2, torch.ones(T, 32))  # sin² + cos² = 1
assert torch.equal(sinusoids[0], torch.cat([torch.zeros(32), torch.ones(32)]))  # t = 0: sin 0, cos 0
print(f"sinusoidal embedding of {T} steps: {tuple(sinusoids.shape)}")

# %% [markdown]
# The sinusoids are fixed; a small MLP after them lets the network reshape the features into whatever
# it finds useful (DDPM does the same, widening to $4d$ in between).


# %%
#| export
class SinusoidalTimeEmbedding(nn.Module):
    r"""e(t) = W₂ SiLU(W₁ emb(t) + b₁) + b₂: fixed sinusoids, then a learned MLP (dim → 4·dim → dim).

    ``t``: integer tensor (B,) → (B, dim).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # Match the MLP's dtype so a model cast to bfloat16 or float64 still works.
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


# %%
sinusoidal_time = SinusoidalTimeEmbedding(EMBEDDING_DIM)
assert sinusoidal_time(torch.tensor([0, 500, 999])).shape == (3, EMBEDDING_DIM)

# %% [markdown]
# The reference does something simpler: a learned table `nn.Embedding(T, d)`, one free row of $d$
# numbers per timestep. The heat-maps below show both at initialisation (rows: $t$; columns: the $d$
# features), and the right panel the cosine similarity between the codes of $t$ and $t + \Delta$.

# %%
learned_time = nn.Embedding(T, EMBEDDING_DIM)
table = learned_time.weight.detach()


def neighbour_similarity(codes: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Mean cosine similarity between rows t and t + Δ of ``codes`` (T, d), for Δ = 1..max_shift."""
    unit = codes / codes.norm(dim=1, keepdim=True)
    return torch.stack([(unit[:-shift] * unit[shift:]).sum(1).mean() for shift in range(1, max_shift + 1)])


shifts = torch.arange(1, 101)
similarity_sinusoidal = neighbour_similarity(sinusoids, 100)
similarity_learned = neighbour_similarity(table, 100)

fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
image = axes[0].imshow(sinusoids, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set_title("sinusoidal emb(t) (fixed)")
fig.colorbar(image, ax=axes[0])
image = axes[1].imshow(table, aspect="auto", cmap="RdBu", vmin=-3, vmax=3)
axes[1].set_title("learned nn.Embedding(T, d) at initialisation")
fig.colorbar(image, ax=axes[1])
for ax in axes[:2]:
    ax.set_xlabel("feature")
    ax.set_ylabel("t")
axes[2].plot(shifts, similarity_sinusoidal, label="sinusoidal")
axes[2].plot(shifts, similarity_learned, label="learned (init)")
axes[2].set_xlabel(r"$\Delta$")
axes[2].set_title(r"cosine similarity of codes of $t$ and $t+\Delta$")
axes[2].legend()
fig.tight_layout()
save_figure(fig, "04_time_embeddings")
plt.show()

# %%
parameters_learned = sum(p.numel() for p in learned_time.parameters())
parameters_sinusoidal = sum(p.numel() for p in sinusoidal_time.parameters())
print(
    f"similarity of t and t+1: sinusoidal {similarity_sinusoidal[0]:.3f}, learned {similarity_learned[0]:.3f}"
)
print(f"similarity of t and t+100: sinusoidal {similarity_sinusoidal[-1]:.3f}")
print(f"parameters: learned table {parameters_learned:,}; sinusoids + MLP {parameters_sinusoidal:,}")
assert similarity_sinusoidal[0] > 0.9 and similarity_sinusoidal[-1] < similarity_sinusoidal[0]
assert abs(similarity_learned[0]) < 0.05  # random rows: neighbours share nothing
assert parameters_learned == T * EMBEDDING_DIM

# %% [markdown]
# **What each gives up.** The *learned table* gives up any notion that $t = 500$ and $t = 501$ are
# neighbours: at the start their codes are unrelated (similarity ≈ 0), and each row only learns from
# the training steps that happen to draw its $t$ — with a batch of 128 and $T = 1000$, a given row
# gets a gradient in about one step out of eight. It is also tied to $T$: there is no row for
# $t = 1000$ or $t = 499.5$. In exchange it is free to give adjacent steps very different codes, and a
# lookup costs nothing. The *sinusoids* give up that freedom — neighbouring steps start out similar,
# which suits a noise level that changes smoothly with $t$ — and cost a small MLP per call, with fewer
# parameters than the table (printed above). The course uses sinusoids by default
# (`time_embedding="sinusoidal"`); `time_embedding="learned"` rebuilds the reference.
#
# ## 2. Adding time to a feature map
#
# The reference injects time with a `TimeMLP`: it maps the embedding to one number per channel and
# adds that number to every pixel of the channel — broadcasting over $H \times W$ — then applies SiLU.
# It exists so that every block can shift its features by an amount that depends on the noise level.


# %%
#| export
class TimeMLP(nn.Module):
    r"""Inject time into a feature map: y = SiLU(x + MLP(e)[:, :, None, None]).

    ``x``: (B, out_dim, H, W); ``e``: (B, embedding_dim). The MLP (embedding_dim → hidden_dim →
    out_dim) gives one value per channel, which broadcasting adds to all H × W pixels of it.
    """

    def __init__(self, embedding_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.mlp(e)[:, :, None, None])


# %%
time_mlp = TimeMLP(EMBEDDING_DIM, hidden_dim=64, out_dim=16)
e = sinusoidal_time(torch.tensor([10, 900]))
shifted = time_mlp(torch.zeros(2, 16, 7, 7), e)
assert shifted.shape == (2, 16, 7, 7)
assert torch.equal(shifted, shifted[:, :, :1, :1].expand_as(shifted))  # one value per channel and image
assert not torch.allclose(shifted[0], shifted[1])  # ... that depends on t
print("TimeMLP adds one value per channel; t=10 and t=900 get different values")

# %% [markdown]
# ## 3. Convolution, normalisation, activation
#
# Every unit below is built from `conv → norm → SiLU` (SiLU, $x \cdot \mathrm{sigmoid}(x)$
# {cite:p}`elfwing2018silu`). The normalisation layer is a choice we settle by measurement in section 10, so
# it is an argument from the start: `"batch"` is BatchNorm {cite:p}`ioffe2015batchnorm` (the reference:
# statistics over the batch and the pixels of each channel), `"group"` is GroupNorm {cite:p}`wu2018groupnorm`
# (statistics over groups of channels within one image; we use $\gcd(C, 8)$ groups).

# %%
#| export
NORMS = ("batch", "group")


def make_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d(channels), or GroupNorm with gcd(channels, 8) groups; shape-preserving (B, C, H, W)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class ConvNormAct(nn.Module):
    """conv k×k (stride s, padding k // 2) → norm → SiLU: (B, C_in, H, W) → (B, C_out, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, norm="batch"):
        super().__init__()
        # One attribute called ``module``, as in the reference, so parameter names match its checkpoints.
        self.module = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2),
            make_norm(norm, out_channels),
            nn.SiLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


# %%
x = torch.randn(4, 8, 28, 28)
assert ConvNormAct(8, 16, 3, norm="group")(x).shape == (4, 16, 28, 28)
assert ConvNormAct(8, 16, 3, stride=2, norm="batch")(x).shape == (4, 16, 14, 14)
print("ConvNormAct: (4, 8, 28, 28) ->", tuple(ConvNormAct(8, 16, 1)(x).shape))

# %% [markdown]
# ## 4. ShuffleNet v2 units
#
# ShuffleNet v2 {cite:p}`ma2018shufflenetv2` was designed for phones: most of its work is done by **depthwise**
# 3×3 convolutions (one filter per channel, $9C$ weights instead of $9C^2$) and cheap 1×1
# convolutions, on *half* of the channels at a time. Two halves that never exchange information
# would make two separate networks, so after each unit a **channel shuffle** interleaves them:
# reshape $C$ channels to $(g, C/g)$, transpose, flatten.


# %%
#| export
class ChannelShuffle(nn.Module):
    """Interleave ``groups`` groups of channels: (B, C, H, W) → (B, C, H, W), channel order
    [g₀c₀, g₁c₀, …, g₀c₁, g₁c₁, …] (reshape to (B, groups, C/groups, H, W), swap axes 1 and 2)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.view(batch, self.groups, channels // self.groups, height, width)
        return x.transpose(1, 2).reshape(batch, channels, height, width)


# %%
labels = torch.arange(8.0).view(1, 8, 1, 1)  # channel c holds the value c
shuffled = ChannelShuffle(2)(labels)
print("channel order after ChannelShuffle(2):", shuffled.flatten().int().tolist())
assert shuffled.shape == labels.shape
assert shuffled.flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]  # halves interleaved

# %% [markdown]
# The **basic unit** splits the channels into halves $x_1, x_2$, sends each through a branch and
# shuffles the concatenation. In the paper, $x_1$ passes through unchanged (exercise 4.2 builds that
# version); the reference transforms both halves, which also lets the output width differ from the
# input width. The **down-sampling unit** feeds *all* channels to both branches, and a stride-2
# depthwise convolution in each halves the resolution. Attribute names follow the reference, so the
# model weights of a reference checkpoint load into `Unet(**REFERENCE_CONFIG)` (section 7).


# %%
#| export
class ShuffleUnit(nn.Module):
    r"""ShuffleNet v2 basic unit as the reference uses it (Ma et al., 2018, fig. 3c, both halves transformed).

    x = [x₁, x₂] (C_in/2 channels each);
    branch 1: depthwise 3×3 → norm → (1×1 → norm → SiLU)                         C_in/2 → C_out/2
    branch 2: (1×1 → norm → SiLU) → depthwise 3×3 → norm → (1×1 → norm → SiLU)   C_in/2 → C_out/2
    y = ChannelShuffle(2)([branch1(x₁), branch2(x₂)]): (B, C_in, H, W) → (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        half, out_half = in_channels // 2, out_channels // 2
        self.branch1 = nn.Sequential(
            nn.Conv2d(half, half, 3, 1, 1, groups=half),
            make_norm(norm, half),
            ConvNormAct(half, out_half, 1, norm=norm),
        )
        self.branch2 = nn.Sequential(
            ConvNormAct(half, half, 1, norm=norm),
            nn.Conv2d(half, half, 3, 1, 1, groups=half),
            make_norm(norm, half),
            ConvNormAct(half, out_half, 1, norm=norm),
        )
        self.channel_shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.channel_shuffle(torch.cat([self.branch1(x1), self.branch2(x2)], dim=1))


class ShuffleDownsample(nn.Module):
    r"""ShuffleNet v2 down-sampling unit (Ma et al., 2018, fig. 3d): both branches see all of x.

    branch 1: depthwise 3×3 stride 2 → norm → (1×1 → norm → SiLU)                          C_in → C_out/2
    branch 2: (1×1 → norm → SiLU) → depthwise 3×3 stride 2 → norm → (1×1 → norm → SiLU)    C_in → C_out/2
    y = ChannelShuffle(2)([branch1(x), branch2(x)]): (B, C_in, H, W) → (B, C_out, H/2, W/2).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch"):
        super().__init__()
        out_half = out_channels // 2
        self.branch1 = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels),
            make_norm(norm, in_channels),
            ConvNormAct(in_channels, out_half, 1, norm=norm),
        )
        self.branch2 = nn.Sequential(
            ConvNormAct(in_channels, out_half, 1, norm=norm),
            nn.Conv2d(out_half, out_half, 3, 2, 1, groups=out_half),
            make_norm(norm, out_half),
            ConvNormAct(out_half, out_half, 1, norm=norm),
        )
        self.channel_shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_shuffle(torch.cat([self.branch1(x), self.branch2(x)], dim=1))


# %%
x = torch.randn(4, 32, 28, 28)
assert ShuffleUnit(32, 32)(x).shape == (4, 32, 28, 28)
assert ShuffleUnit(32, 16)(x).shape == (4, 16, 28, 28)
assert ShuffleDownsample(32, 64)(x).shape == (4, 64, 14, 14)
print(f"ShuffleUnit(32, 32): {sum(p.numel() for p in ShuffleUnit(32, 32).parameters()):,} parameters")

# %% [markdown]
# ## 5. A dense unit, for comparison
#
# Depthwise convolutions save arithmetic, but arithmetic is not what limits a small network on a
# CPU: every depthwise conv, norm and activation is a separate pass over memory, and the reference
# runs dozens of them per block. The alternative we measure is the plain one: a single **dense**
# 3×3 convolution over all channels, with a residual connection (a 1×1 convolution where the width
# changes), and a stride-2 dense convolution to down-sample. Same widths, fewer and bigger operations.


# %%
#| export
class DenseUnit(nn.Module):
    r"""A residual unit of one dense 3×3 convolution: y = SiLU(norm(conv₃ₓ₃(x))) + skip(x).

    skip is the identity when C_in = C_out and a 1×1 convolution otherwise:
    (B, C_in, H, W) → (B, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group"):
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3, norm=norm)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.skip(x)


class DenseDownsample(nn.Module):
    """A dense 3×3 convolution with stride 2 → norm → SiLU: (B, C_in, H, W) → (B, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "group"):
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3, stride=2, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


#: unit name → (unit that keeps H × W, unit that halves it); both take (in_channels, out_channels, norm).
UNITS = {"shuffle": (ShuffleUnit, ShuffleDownsample), "dense": (DenseUnit, DenseDownsample)}


# %%
x = torch.randn(4, 32, 28, 28)
assert DenseUnit(32, 32)(x).shape == (4, 32, 28, 28)
assert DenseUnit(32, 16)(x).shape == (4, 16, 28, 28)
assert DenseDownsample(32, 64)(x).shape == (4, 64, 14, 14)
for name, (unit, _) in UNITS.items():
    block = unit(32, 32)
    print(
        f"{name:8s} unit 32 -> 32: {sum(p.numel() for p in block.parameters()):6,} parameters, "
        f"{sum(1 for m in block.modules() if isinstance(m, nn.Conv2d))} convolutions"
    )

# %% [markdown]
# ## 6. Encoder, bottleneck, decoder
#
# A U-Net level has an **encoder block** on the way down and a **decoder block** on the way up:
#
# - *encoder block*: a stack of units (the last one changes the width), time injection, then a
#   down-sampling unit. It returns the down-sampled map *and* the map before time injection, the
#   **skip** (shortcut) that the decoder will receive;
# - *bottleneck*: a stack of units at the lowest resolution (7×7), where every output pixel sees the
#   whole digit;
# - *decoder block*: bilinear up-sampling ×2, concatenation with the skip from the same level —
#   the fine detail the down-sampling threw away — a stack of units, time injection, and one more unit
#   that sets the output width.
#
# This is the reference's structure; the bottleneck has no time injection of its own (its input comes
# straight out of a time-injected encoder block).


# %%
#| export
def unit_stack(unit: str, in_channels: int, out_channels: int, count: int, norm: str) -> nn.Sequential:
    """``count`` units: count − 1 at width C_in, then one C_in → C_out. (B, C_in, H, W) → (B, C_out, H, W)."""
    make_unit = UNITS[unit][0]
    units = [make_unit(in_channels, in_channels, norm) for _ in range(count - 1)]
    return nn.Sequential(*units, make_unit(in_channels, out_channels, norm))


class EncoderBlock(nn.Module):
    """Units (C_in → C_out/2) [→ self-attention] → skip; TimeMLP; down-sampling unit (C_out/2 → C_out, H/2 × W/2).

    ``forward(x, e)``: x (B, C_in, H, W), e (B, E) → (down (B, C_out, H/2, W/2), skip (B, C_out/2, H, W)).
    ``attention=True`` adds a :class:`SelfAttention` (section 13) after the units.
    """

    def __init__(self, in_channels, out_channels, time_embedding_dim, unit="dense", units=1, norm="group",
                 attention=False):  # fmt: skip
        super().__init__()
        self.conv0 = unit_stack(unit, in_channels, out_channels // 2, units, norm)
        self.attention = SelfAttention(out_channels // 2, norm=norm) if attention else nn.Identity()
        self.time_mlp = TimeMLP(time_embedding_dim, out_channels, out_channels // 2)
        self.conv1 = UNITS[unit][1](out_channels // 2, out_channels, norm)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.attention(self.conv0(x))
        return self.conv1(self.time_mlp(skip, e)), skip


class DecoderBlock(nn.Module):
    """Bilinear ×2 up-sampling, concatenate the skip, units (C_in → C_in/2), TimeMLP [, self-attention], unit → C_out/2.

    ``forward(x, skip, e)``: x (B, C_in/2, H/2, W/2), skip (B, C_in/2, H, W), e (B, E) → (B, C_out/2, H, W).
    """

    def __init__(self, in_channels, out_channels, time_embedding_dim, unit="dense", units=1, norm="group",
                 attention=False):  # fmt: skip
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv0 = unit_stack(unit, in_channels, in_channels // 2, units, norm)
        self.time_mlp = TimeMLP(time_embedding_dim, in_channels, in_channels // 2)
        self.attention = SelfAttention(in_channels // 2, norm=norm) if attention else nn.Identity()
        self.conv1 = UNITS[unit][0](in_channels // 2, out_channels // 2, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.upsample(x), skip], dim=1)
        return self.conv1(self.attention(self.time_mlp(self.conv0(x), e)))


# %%
e = sinusoidal_time(torch.tensor([3, 300]))
encoder = EncoderBlock(32, 64, EMBEDDING_DIM, unit="shuffle", units=2, norm="batch")
down, skip = encoder(torch.randn(2, 32, 28, 28), e)
bottleneck = unit_stack("shuffle", 64, 32, 2, "batch")
middle = bottleneck(down)
decoder = DecoderBlock(64, 32, EMBEDDING_DIM, unit="shuffle", units=2, norm="batch")
up = decoder(middle, skip, e)
print(f"encoder: down {tuple(down.shape)}, skip {tuple(skip.shape)}")
print(f"bottleneck {tuple(middle.shape)} -> decoder {tuple(up.shape)}")
assert down.shape == (2, 64, 14, 14) and skip.shape == (2, 32, 28, 28)
assert middle.shape == (2, 32, 14, 14) and up.shape == (2, 16, 28, 28)

# %% [markdown]
# ## 7. The U-Net
#
# `Unet` stacks one encoder and one decoder block per entry of `dim_mults`: with `base_dim = 32` and
# `dim_mults = [2, 4]` the widths are 32 → 64 → 128 and the resolutions 28 → 14 → 7. An initial
# 3×3 convolution lifts the 1-channel image to `base_dim` channels; a final 1×1 convolution maps
# `base_dim / 2` channels back to one, the predicted noise.
#
# Everything the reference hard-wires is a keyword option: the time embedding, the normalisation,
# the unit, and how many units each block stacks (the reference: 4 per encoder/decoder block, 3 in
# the bottleneck). `REFERENCE_CONFIG` rebuilds the reference exactly. The defaults — sinusoidal
# embedding, GroupNorm, one dense unit per block — are justified in sections 1, 10 and 11.
#
# `forward(x, t)` checks its inputs first: a wrong shape or a float timestep would otherwise surface
# as a message from deep inside torch, or not at all. The constructor checks its options the same way, and
# raises the course's `UsageError` (a `ValueError` that names the option), which the command line reports as one
# line: `--base-dim 15` is bad input, not a crash.

# %%
#| export
TIME_EMBEDDINGS = ("sinusoidal", "learned")


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}", option=name)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}", option=name)


class Unet(nn.Module):
    r"""The denoiser ε_θ(x_t, t): (B, C_in, H, W) and timesteps t (B,) → predicted noise (B, C_out, H, W).

    (Or the predicted velocity v or clean image x_0, when built with ``prediction="v"`` or ``"x0"``.)

    Widths d_0 = base_dim, d_i = base_dim · dim_mults[i−1]; level i runs at (H, W) / 2^i. Encoder
    block i maps d_i → d_{i+1} and halves the resolution, the bottleneck maps d_L → d_L / 2, decoder
    blocks mirror the encoders with skip connections, and a 1×1 convolution maps d_0 / 2 → C_out.
    H and W must be multiples of 2^len(dim_mults).

    Keyword options (defaults: the course's model; :data:`REFERENCE_CONFIG`: the reference's):

    - ``time_embedding``: ``"sinusoidal"`` (sinusoids + MLP) or ``"learned"`` (``nn.Embedding(T, E)``);
    - ``norm``: ``"group"`` (GroupNorm) or ``"batch"`` (BatchNorm);
    - ``unit``: ``"dense"`` (one dense 3×3 conv, residual) or ``"shuffle"`` (ShuffleNet v2);
    - ``units_per_block``: units in each encoder/decoder block's stack; ``mid_units``: in the bottleneck;
    - ``num_classes``: ``None`` (unconditional) or the number of classes K of a class-conditional model
      (section 12): ``forward(x, t, y)`` then adds a learned label embedding to the time embedding, with
      one extra row for "no label" (y = −1, or ``y=None``), which classifier-free guidance needs (chapter 10);
    - ``attention``: the levels at which to add multi-head self-attention (section 13): level L =
      len(dim_mults) is the bottleneck (7×7 for MNIST), L − 1 the level above (14×14), 0 the input's
      resolution; ``()`` (the default) adds none;
    - ``prediction``: what the network outputs, ``"eps"`` (the noise, DDPM's choice), ``"v"`` or ``"x0"``
      (chapter 02, section 6; chapter 05). The network itself is the same; the samplers read this to
      convert its output (:func:`ddpm_lib.diffusion.prediction_of`).

    ``self.config`` holds every argument, so ``Unet(**model.config)`` builds an identical network.
    """

    def __init__(
        self,
        timesteps: int = 1000,
        time_embedding_dim: int = 64,
        in_channels: int = 1,
        out_channels: int = 1,
        base_dim: int = 32,
        dim_mults: Sequence[int] = (2, 4),
        *,
        time_embedding: str = "sinusoidal",
        norm: str = "group",
        unit: str = "dense",
        units_per_block: int = 1,
        mid_units: int = 1,
        num_classes: int | None = None,
        attention: Sequence[int] = (),
        prediction: str = "eps",
    ):
        super().__init__()
        for name, value in [
            ("timesteps", timesteps),
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("units_per_block", units_per_block),
            ("mid_units", mid_units),
        ]:
            _check_int(name, value)
        _check_int("time_embedding_dim", time_embedding_dim, minimum=2)
        if time_embedding_dim % 2:
            raise UsageError(
                f"time_embedding_dim must be even, got {time_embedding_dim}", "time_embedding_dim"
            )
        _check_int("base_dim", base_dim, minimum=2)
        if base_dim % 2:
            raise UsageError(
                f"base_dim must be even (the last decoder unit halves it), got {base_dim}", "base_dim"
            )
        if unit == "shuffle" and base_dim % 4:
            raise UsageError(
                f"base_dim must be a multiple of 4 for unit='shuffle' (halves of halves), got {base_dim}",
                "base_dim",
            )
        if isinstance(dim_mults, (str, bytes)) or not isinstance(dim_mults, Sequence) or not dim_mults:
            raise UsageError(
                f"dim_mults must be a non-empty list of integers >= 1, got {dim_mults!r}", "dim_mults"
            )
        for multiplier in dim_mults:
            _check_int("every entry of dim_mults", multiplier)
        _check_choice("time_embedding", time_embedding, TIME_EMBEDDINGS)
        _check_choice("norm", norm, NORMS)
        _check_choice("unit", unit, tuple(UNITS))
        if num_classes is not None:
            _check_int("num_classes", num_classes)
        if isinstance(attention, (str, bytes)) or not isinstance(attention, Sequence):
            raise UsageError(
                f"attention must be a list of levels 0..{len(dim_mults)}, got {attention!r}", "attention"
            )
        for level in attention:
            if (
                isinstance(level, bool)
                or not isinstance(level, numbers.Integral)
                or not 0 <= level <= len(dim_mults)
            ):
                raise UsageError(
                    f"attention must list levels 0..{len(dim_mults)} (len(dim_mults) = {len(dim_mults)} is the "
                    f"bottleneck), got {list(attention)!r}",
                    "attention",
                )
        _check_choice("prediction", prediction, PREDICTIONS)

        self.config = dict(
            timesteps=int(timesteps),
            time_embedding_dim=int(time_embedding_dim),
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            base_dim=int(base_dim),
            dim_mults=[int(m) for m in dim_mults],
            time_embedding=time_embedding,
            norm=norm,
            unit=unit,
            units_per_block=int(units_per_block),
            mid_units=int(mid_units),
            num_classes=None if num_classes is None else int(num_classes),
            attention=sorted({int(level) for level in attention}),
            prediction=prediction,
        )
        dims = [base_dim] + [base_dim * m for m in dim_mults]
        widths = list(itertools.pairwise(dims))  # (C_in, C_out) of each level
        embedding_dim = time_embedding_dim
        block_options = dict(unit=unit, units=units_per_block, norm=norm)

        self.init_conv = ConvNormAct(in_channels, base_dim, 3, norm=norm)
        if time_embedding == "learned":
            self.time_embedding = nn.Embedding(timesteps, embedding_dim)
        else:
            self.time_embedding = SinusoidalTimeEmbedding(embedding_dim)
        levels = len(widths)  # encoder block i works at level i; the bottleneck is level `levels`
        attend = set(self.config["attention"])
        self.encoder_blocks = nn.ModuleList(
            EncoderBlock(c_in, c_out, embedding_dim, **block_options, attention=level in attend)
            for level, (c_in, c_out) in enumerate(widths)
        )
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(c_out, c_in, embedding_dim, **block_options, attention=level in attend)
            for level, (c_in, c_out) in reversed(list(enumerate(widths)))
        )
        self.mid_attention = SelfAttention(dims[-1], norm=norm) if levels in attend else nn.Identity()
        self.mid_block = unit_stack(unit, dims[-1], dims[-1] // 2, mid_units, norm)
        self.final_conv = nn.Conv2d(base_dim // 2, out_channels, kernel_size=1)
        if num_classes is not None:  # row num_classes: the "no label" (null) token
            self.label_embedding = nn.Embedding(num_classes + 1, embedding_dim)

    def check_input(self, x: torch.Tensor, t) -> torch.Tensor:
        """Check ``x`` (B, C_in, H, W) and ``t`` (int, 0-d or (B,) integer tensor); return t as int64 (B,)."""
        in_channels, timesteps = self.config["in_channels"], self.config["timesteps"]
        factor = 2 ** len(self.config["dim_mults"])
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            what = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must be a floating-point tensor of shape (B, {in_channels}, H, W), got {what}"
            )
        if x.dim() != 4 or x.shape[1] != in_channels or x.shape[0] == 0:
            raise ValueError(
                f"x must have shape (B, {in_channels}, H, W) with B >= 1 (in_channels={in_channels}), "
                f"got {tuple(x.shape)}"
            )
        height, width = x.shape[2:]
        if height == 0 or width == 0 or height % factor or width % factor:
            raise ValueError(
                f"x's height and width must be positive multiples of {factor} "
                f"(2**len(dim_mults) with dim_mults={self.config['dim_mults']}), got {height}x{width}"
            )
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            t = torch.tensor(int(t))
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be an int or an integer tensor of shape ({x.shape[0]},), got {t!r}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(
                f"t must hold integer timesteps (an integer dtype such as int64), got dtype {t.dtype}"
            )
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"t must have shape ({x.shape[0]},) to match x's batch, or be a single timestep; "
                f"got shape {tuple(t.shape)}"
            )
        if t.min() < 0 or t.max() >= timesteps:
            raise ValueError(
                f"t must lie in 0..{timesteps - 1} (timesteps={timesteps}), "
                f"got values from {int(t.min())} to {int(t.max())}"
            )
        return t.to(device=x.device, dtype=torch.long)

    def check_labels(self, y, t: torch.Tensor) -> torch.Tensor:
        """Check the labels ``y`` of a class-conditional model ((B,) integers in −1..K−1; −1 or ``None``: no label).

        Returns the rows of ``label_embedding`` to read, (B,) int64: the label, or K for "no label".
        """
        num_classes = self.config["num_classes"]
        if y is None:
            return torch.full_like(t, num_classes)
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor of class labels, got {y!r}")
        if y.shape != t.shape:
            raise ValueError(
                f"y must have shape {tuple(t.shape)} (one label per image), got {tuple(y.shape)}"
            )
        if y.numel() and (y.min() < -1 or y.max() >= num_classes):
            raise ValueError(
                f"y must lie in 0..{num_classes - 1}, or be -1 for no label; got {int(y.min())}..{int(y.max())}"
            )
        y = y.to(device=t.device, dtype=torch.long)
        return torch.where(y < 0, torch.full_like(y, num_classes), y)

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        t = self.check_input(x, t)
        e = self.time_embedding(t)
        if self.config["num_classes"] is not None:
            e = e + self.label_embedding(self.check_labels(y, t))
        elif y is not None:
            raise ValueError("y: this U-Net is unconditional (num_classes=None); build it with num_classes=K")
        x = self.init_conv(x)
        skips = []
        for block in self.encoder_blocks:
            x, skip = block(x, e)
            skips.append(skip)
        x = self.mid_block(self.mid_attention(x))
        for block, skip in zip(self.decoder_blocks, reversed(skips), strict=True):
            x = block(x, skip, e)
        return self.final_conv(x)


#: The reference implementation's U-Net: learned time table, BatchNorm, ShuffleNet v2 units (4 per
#: block, 3 in the bottleneck), base width 32, dim_mults [2, 4], for 1-channel 28×28 MNIST.
REFERENCE_CONFIG = dict(
    timesteps=1000,
    time_embedding_dim=64,
    in_channels=1,
    out_channels=1,
    base_dim=32,
    dim_mults=[2, 4],
    time_embedding="learned",
    norm="batch",
    unit="shuffle",
    units_per_block=4,
    mid_units=3,
)


# %%
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


torch.manual_seed(0)
reference = Unet(**REFERENCE_CONFIG)
model = Unet()
x = torch.randn(8, 1, 28, 28)
t = torch.randint(0, 1000, (8,))
print(f"reference configuration: {count_parameters(reference):,} parameters")
print(f"course default:          {count_parameters(model):,} parameters")
assert reference(x, t).shape == x.shape and model(x, t).shape == x.shape
assert count_parameters(reference) == 261_873  # the reference's count (≈ 262k)
assert count_parameters(model) >= count_parameters(reference)  # no smaller than the reference
assert torch.equal(model(x, 500), model(x, torch.full((8,), 500)))  # a scalar t is broadcast
assert Unet(**model.config).config == model.config

# %% [markdown]
# ## 8. Looking inside: shapes and parameters per level
#
# Forward hooks record what each stage receives and returns. A stage belongs to the level whose
# resolution it *works at* — the down-sampling unit of level 0 reads 28×28, so it counts there.


# %%
def stages(net: Unet) -> list[tuple[str, nn.Module]]:
    """The stages of ``net`` in the order the forward pass runs them."""
    named = [("time embedding", net.time_embedding), ("init conv", net.init_conv)]
    for i, block in enumerate(net.encoder_blocks):
        named += [(f"encoder {i}: units", block.conv0), (f"encoder {i}: time", block.time_mlp)]
        named += [(f"encoder {i}: down", block.conv1)]
    named.append(("bottleneck", net.mid_block))
    for i, block in enumerate(net.decoder_blocks):
        named += [(f"decoder {i}: up+skip, units", block.conv0), (f"decoder {i}: time", block.time_mlp)]
        named += [(f"decoder {i}: unit", block.conv1)]
    return [*named, ("final conv", net.final_conv)]


def trace(net: Unet, x: torch.Tensor, t: torch.Tensor) -> list[dict]:
    """Run ``net(x, t)`` once; return each stage's input/output shape (without batch) and parameters."""
    rows, handles = [], []
    for name, module in stages(net):

        def record(module, inputs, output, name=name):
            rows.append(
                dict(
                    stage=name,
                    input=tuple(inputs[0].shape[1:]),
                    output=tuple(output.shape[1:]),
                    parameters=count_parameters(module),
                )
            )

        handles.append(module.register_forward_hook(record))
    with torch.no_grad():
        net(x, t)
    for handle in handles:
        handle.remove()
    return rows


def print_summary(net: Unet, title: str) -> list[dict]:
    rows = trace(net.eval(), torch.zeros(1, 1, 28, 28), torch.tensor([0]))
    print(f"{title}\n{'stage':30s} {'input':>14s} {'output':>14s} {'parameters':>11s}")
    for row in rows:
        print(f"{row['stage']:30s} {row['input']!s:>14s} {row['output']!s:>14s} {row['parameters']:11,}")
    levels: dict[str, int] = {}
    for row in rows:
        level = f"{row['input'][-1]}x{row['input'][-1]}" if len(row["input"]) == 3 else "time"
        levels[level] = levels.get(level, 0) + row["parameters"]
    print("per level: " + ", ".join(f"{level}: {count:,}" for level, count in levels.items()))
    print(f"total: {count_parameters(net):,}\n")
    return rows


reference_rows = print_summary(reference, "reference configuration")
default_rows = print_summary(model, "course default")

# %%
for net, rows in [(reference, reference_rows), (model, default_rows)]:
    assert sum(row["parameters"] for row in rows) == count_parameters(net)  # every parameter is in a stage
resolutions = [row["output"][-1] for row in default_rows if len(row["output"]) == 3]
assert resolutions == [row["output"][-1] for row in reference_rows if len(row["output"]) == 3]
print("output resolution of each stage:", resolutions)
assert resolutions[0] == resolutions[-1] == 28 and min(resolutions) == 7
assert default_rows[-1]["output"] == (1, 28, 28)

# %% [markdown]
# The plot draws the same trace: each bar is one stage's output, its height the resolution, its
# label the channel count. The "U" is the resolution going down and back up; the skips connect bars
# of equal height.

# %%
image_rows = [row for row in default_rows if len(row["output"]) == 3]
fig, ax = plt.subplots(figsize=(13, 3.8))
bars = ax.bar(range(len(image_rows)), [row["output"][-1] for row in image_rows], color="tab:blue")
for bar, row in zip(bars, image_rows, strict=True):
    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.5, f"{row['output'][0]} ch", ha="center")
ax.set_xticks(range(len(image_rows)), [row["stage"] for row in image_rows], rotation=35, ha="right")
ax.set_ylabel("output height = width")
ax.set_ylim(0, 33)
ax.set_title("feature maps through the course's U-Net (channels on top of each bar)")
fig.tight_layout()
save_figure(fig, "04_feature_maps")
plt.show()

# %%
heights = [int(bar.get_height()) for bar in bars]
channels = [row["output"][0] for row in image_rows]
print("heights:", heights)
print("channels:", channels)
assert heights == [28, 28, 28, 14, 14, 14, 7, 7, 14, 14, 14, 28, 28, 28, 28]
assert max(channels) == 128 and channels[-1] == 1

# %% [markdown]
# ## 9. Checking the input
#
# A denoiser that quietly accepts a float timestep, a 3-channel image or a 30×30 image would give a
# wrong answer or a shape error from deep inside `torch.cat`. Each of these fails at the door, with a
# message that names the argument and what is allowed:

# %%
good_x, good_t = torch.zeros(2, 1, 28, 28), torch.tensor([1, 2])
bad_inputs = {
    "3 channels": (torch.zeros(2, 3, 28, 28), good_t),
    "30x30": (torch.zeros(2, 1, 30, 30), good_t),
    "integer image": (torch.zeros(2, 1, 28, 28, dtype=torch.long), good_t),
    "float t": (good_x, torch.tensor([1.0, 2.0])),
    "t of shape (2, 1)": (good_x, torch.tensor([[1], [2]])),
    "t of 3 entries": (good_x, torch.tensor([1, 2, 3])),
    "t = 1000": (good_x, torch.tensor([1, 1000])),
    "t = -1": (good_x, -1),
}
for what, (bad_x, bad_t) in bad_inputs.items():
    try:
        model(bad_x, bad_t)
    except ValueError as error:
        print(f"{what:18s} -> {error}")
    else:
        raise AssertionError(f"{what} was accepted")
for bad in [dict(base_dim=33), dict(norm="layer"), dict(dim_mults=[]), dict(unit="shuffle", base_dim=34)]:
    try:
        Unet(**bad)
    except ValueError as error:
        print(f"Unet(**{bad}) -> {error}")
    else:
        raise AssertionError(f"Unet(**{bad}) was accepted")

# %% [markdown]
# ## 10. Normalisation: BatchNorm is a trap in a denoiser
#
# **BatchNorm** normalises each channel with the mean and variance of the current *batch* while
# training, and keeps running averages of them for evaluation (`model.eval()`). That is harmless when
# every batch looks alike. In a denoiser it is not:
#
# - a training batch mixes all noise levels, so the running averages describe a *mixture* of clean
#   and noisy inputs; at sampling time every image in the batch shares one $t$, whose statistics
#   differ from that mixture — in eval mode the network normalises with the mixture's numbers, not those of
#   the $t$ at hand (how much that costs is measured below);
# - forget `model.eval()` and the sampler normalises with the statistics of a single-$t$ batch,
#   which the network never saw in training; the output of one image now depends on the others;
# - with an **exponential moving average** of the weights ([chapter 05](05_training.py)), the running statistics were
#   collected for the *live* weights, not for the averaged ones (and an averaging helper that skips
#   buffers leaves them at their initial values). They need re-estimating with a pass over the data.
#
# **GroupNorm** normalises every image on its own, over groups of channels: no batch, no running
# statistics, identical in train and eval mode, nothing for the EMA to get wrong. What it may cost is
# speed: at inference an eval-mode BatchNorm can be folded into the convolution before it
# (exercise 4.3), GroupNorm can't. We time the training steps too.
#
# The measurement: train the course's architecture twice, identical but for the norm, on the bundled
# digits (steps alternate between the two models so both see the same machine load). Then evaluate
# the noise-prediction loss on held-out digits in single-$t$ batches, the way a sampler calls the
# network, once in eval mode and once in train mode. In the full profile the next cell takes about a minute on a
# 2-core laptop (150 steps of batch 64 for each of the two networks); a progress bar counts the steps.

# %%
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
train_images = load_mnist("train").tensors[0]
heldout_images = load_mnist("heldout").tensors[0][:128]


def make_study_model(norm: str) -> Unet:
    torch.manual_seed(0)  # the same starting weights for both norms (norm layers start at 1 and 0)
    return Unet(norm=norm)


study = {norm: make_study_model(norm) for norm in NORMS}
optimizers = {norm: torch.optim.AdamW(net.parameters(), lr=1e-3) for norm, net in study.items()}
step_times = {norm: [] for norm in NORMS}
assert torch.equal(study["batch"].init_conv.module[0].weight, study["group"].init_conv.module[0].weight)

generator = torch.Generator().manual_seed(0)
study_started = time.perf_counter()
for _ in tqdm(range(PROFILE.norm_study_steps), desc="training both", disable=not PROFILE.progress):
    index = torch.randint(0, len(train_images), (PROFILE.norm_study_batch_size,), generator=generator)
    x0 = train_images[index]
    t = torch.randint(0, 1000, (len(x0),), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    for norm in NORMS:  # the same batch for both, alternating
        start = time.perf_counter()
        loss = (study[norm](q_sample(scheduler, x0, t, noise), t) - noise).pow(2).mean()
        optimizers[norm].zero_grad()
        loss.backward()
        optimizers[norm].step()
        step_times[norm].append(time.perf_counter() - start)
print(
    f"trained both models for {PROFILE.norm_study_steps} steps of {PROFILE.norm_study_batch_size} digits "
    f"in {time.perf_counter() - study_started:.0f} s"
)

# %%
EVAL_TIMESTEPS = [10, 100, 300, 600, 900]
heldout_noise = torch.randn(heldout_images.shape, generator=torch.Generator().manual_seed(1))


def heldout_prediction(net: nn.Module, t_value: int, train_mode: bool) -> tuple[torch.Tensor, float]:
    """Predicted noise and loss on the held-out digits, all at timestep ``t_value``, as a sampler calls it.

    Train mode runs on a copy: a BatchNorm forward in train mode would update the running statistics.
    """
    net = copy.deepcopy(net).train(train_mode)
    t = torch.full((len(heldout_images),), t_value)
    with torch.no_grad():
        prediction = net(q_sample(scheduler, heldout_images, t, heldout_noise), t)
    return prediction, (prediction - heldout_noise).pow(2).mean().item()


losses = {}
output_gaps = {}
for norm in NORMS:
    for t_value in EVAL_TIMESTEPS:
        eval_out, losses[norm, "eval mode", t_value] = heldout_prediction(study[norm], t_value, False)
        train_out, losses[norm, "train mode", t_value] = heldout_prediction(study[norm], t_value, True)
        output_gaps[norm, t_value] = (train_out - eval_out).abs().max().item()

NORM_NAMES = {"batch": "BatchNorm", "group": "GroupNorm"}
print(f"{'held-out loss at t =':26s}" + "".join(f"{t_value:>8d}" for t_value in EVAL_TIMESTEPS))
for norm in NORMS:
    for mode in ["eval mode", "train mode"]:
        values = "".join(f"{losses[norm, mode, t_value]:8.4f}" for t_value in EVAL_TIMESTEPS)
        print(f"{NORM_NAMES[norm] + ', ' + mode:26s}{values}")
for norm in NORMS:
    gaps = ", ".join(f"{output_gaps[norm, t_value]:.3g}" for t_value in EVAL_TIMESTEPS)
    print(f"{NORM_NAMES[norm]}: largest |train-mode output - eval-mode output| per t: {gaps}")

# %% [markdown]
# In train mode a BatchNorm network's answer for one image also depends on the *other* images in the
# batch. The same held-out digit at $t = 300$, once among digits at $t = 10$ and once among digits at
# $t = 900$:

# %%
first_digit_predictions = {}
for norm in NORMS:
    net = copy.deepcopy(study[norm]).train()
    for companions in [10, 900]:
        t = torch.full((len(heldout_images),), companions)
        t[0] = 300
        with torch.no_grad():
            first_digit_predictions[norm, companions] = net(
                q_sample(scheduler, heldout_images, t, heldout_noise), t
            )[0]
    change = (first_digit_predictions[norm, 10] - first_digit_predictions[norm, 900]).abs().max().item()
    print(f"{NORM_NAMES[norm]}: prediction for the same digit changes by up to {change:.3g} with its batch")
    assert (change == 0) == (norm == "group")

# %% [markdown]
# The bars show the table: per timestep, the loss a sampler would see in each mode.

# %%
series = [("batch", "eval mode"), ("batch", "train mode"), ("group", "eval mode")]
fig, ax = plt.subplots(figsize=(11, 3.8))
width = 0.8 / len(series)
for i, (norm, mode) in enumerate(series):
    label = f"{NORM_NAMES[norm]}, {mode}" + (" (= train mode)" if norm == "group" else "")
    ax.bar(
        [j + i * width for j in range(len(EVAL_TIMESTEPS))],
        [losses[norm, mode, t_value] for t_value in EVAL_TIMESTEPS],
        width,
        label=label,
    )
ax.set_xticks([j + 0.4 - width / 2 for j in range(len(EVAL_TIMESTEPS))], [f"t = {v}" for v in EVAL_TIMESTEPS])
ax.set_yscale("log")
ax.set_ylabel("held-out noise-prediction MSE")
ax.set_title(f"after {PROFILE.norm_study_steps} training steps: the same network with two normalisations")
ax.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "04_norm_study")
plt.show()


# %%
def relative_gap(norm: str, t_value: int) -> float:
    """|L_train-mode − L_eval-mode| / L_eval-mode at one timestep."""
    eval_loss = losses[norm, "eval mode", t_value]
    return abs(losses[norm, "train mode", t_value] - eval_loss) / eval_loss


warm = len(step_times["batch"]) // 4  # the first steps include one-off set-up costs
step_ms = {norm: 1000 * statistics.median(times[warm:]) for norm, times in step_times.items()}
slowdown = step_ms["group"] / step_ms["batch"]
gaps = {norm: statistics.fmean(relative_gap(norm, t_value) for t_value in EVAL_TIMESTEPS) for norm in NORMS}
print(
    "BatchNorm's relative train/eval loss gap per t: "
    + ", ".join(f"t={t_value}: {relative_gap('batch', t_value):.0%}" for t_value in EVAL_TIMESTEPS)
)
print(f"median training step: BatchNorm {step_ms['batch']:.0f} ms, GroupNorm {step_ms['group']:.0f} ms")
print(f"GroupNorm's time per step / BatchNorm's: {slowdown:.2f}")
print(f"mean relative train/eval loss gap: BatchNorm {gaps['batch']:.0%}, GroupNorm {gaps['group']:.0%}")

# The rule: a norm whose loss moves by more than 10% with the mode is a trap for the sampler, and
# we pay up to 2x in step time to avoid it.
chosen_norm = "group" if gaps["batch"] > 0.10 and slowdown < 2.0 else "batch"
print(f"chosen default: norm={chosen_norm!r}")
assert all(output_gaps["group", t] == 0 for t in EVAL_TIMESTEPS)  # GroupNorm: mode makes no difference
assert all(output_gaps["batch", t] > 1e-3 for t in EVAL_TIMESTEPS)  # BatchNorm: it does
assert relative_gap("batch", 900) > relative_gap("batch", 10)  # relatively worst where the task is easy
assert Unet().config["norm"] == chosen_norm  # the package default follows the measurement

# %% [markdown]
# Read the numbers: GroupNorm gives the same output in both modes and whatever the rest of the
# batch holds (the gaps are exactly zero), so the sampler sees the network that training built.
# BatchNorm's output moves with the mode and with the batch. In train mode — single-$t$ batches, as a
# sampler that forgot `model.eval()` feeds it — its held-out loss is several times GroupNorm's at every $t$,
# and relatively worst at large $t$, where predicting the noise is easy and any disturbance shows. In eval
# mode it comes close to GroupNorm at most $t$ in the table above, but not at the smallest $t$, where the
# mixture's statistics fit the nearly clean input worst. So eval mode is the usable one, and it depends on
# running statistics that the EMA weights of [chapter 05](05_training.py) would put out of step again. The ratio of step
# times printed above is what GroupNorm costs in training. The rule in the cell above turns these numbers
# into the default, `norm="group"`; `norm="batch"` reproduces the reference.
#
# ## 11. Units and speed
#
# The reference runs many small operations per block. Counting the layers of the two
# configurations and timing them on a few batches shows what that costs on a CPU:

# %%
for name, net in [("reference", reference), ("course default", model)]:
    convolutions = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convolutions if m.groups > 1]
    norms = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    print(
        f"{name:15s}: {len(convolutions)} convolutions ({len(depthwise)} depthwise), "
        f"{len(norms)} norm layers, {count_parameters(net):,} parameters"
    )
reference_convolutions = sum(isinstance(m, nn.Conv2d) for m in reference.modules())
default_convolutions = sum(isinstance(m, nn.Conv2d) for m in model.modules())
assert default_convolutions * 4 < reference_convolutions

# %%
timing_batch = torch.randn(PROFILE.norm_study_batch_size, 1, 28, 28)
timing_t = torch.randint(0, 1000, (len(timing_batch),))
timings = {"reference": [], "course default": []}
timing_models = {"reference": reference.train(), "course default": model.train()}
for repeat in range(2 + PROFILE.unit_timing_steps):  # the first two repeats warm up
    for name, net in timing_models.items():
        start = time.perf_counter()
        net(timing_batch, timing_t).pow(2).mean().backward()
        if repeat >= 2:
            timings[name].append(time.perf_counter() - start)
timing_ms = {name: 1000 * statistics.median(values) for name, values in timings.items()}
print(
    f"forward + backward of {len(timing_batch)} digits: reference {timing_ms['reference']:.0f} ms, "
    f"course default {timing_ms['course default']:.0f} ms "
    f"({timing_ms['reference'] / timing_ms['course default']:.1f}x faster)"
)

# %% [markdown]
# A few batches are a rough guide; the benchmark in the aside measured it properly.
#
# :::{admonition} Aside: the throughput benchmark behind the default
# :class: dropdown
#
# `python benchmarks/unet_throughput.py` measures training and sampling
# throughput properly — interleaved rounds, the optimiser step, and the cheap CPU levers (bfloat16 autocast,
# channels-last, inference mode) — and is where the default `unit="dense"` with one unit per block comes
# from. The bar it had to clear: train at least 1.5× and sample at least 2× as fast as the reference
# configuration, with no fewer parameters. On 2 cores of an AMD EPYC CPU with native bfloat16, nothing else
# running, torch 2.14.1 (median of 5 rounds), it printed:
#
# | variant | train images/s | sample forward passes/s |
# | --- | --- | --- |
# | reference (float32, as written) | 92.6 | 7.00 |
# | reference + bf16 + inference_mode | 144.1 | 8.90 |
# | default, float32 | 277.7 | 13.43 |
# | default, float32, channels_last | 283.3 | 12.58 |
# | **default + bf16 + inference_mode (kept)** | **433.9** | **20.73** |
# | default + bf16 + channels_last | 345.4 | 13.59 |
# | 2 dense units per block + bf16 | 253.0 | 12.48 |
#
# Ours/reference: 4.7× for training and 3.0× for sampling, with 428,977 parameters against 261,873.
# Without bfloat16 the default still trains 3.0× faster but samples only 1.9× faster: on a CPU without
# native bfloat16 support the sampling margin is thin.
# :::
#
# bfloat16 is only fast where it is native: on a CPU with bfloat16 instructions
# (AVX-512 BF16 or AMX on x86, BF16 on Arm) or a GPU of compute capability 8.0 and above. On a CPU without them,
# such as an x86 laptop with AVX2 alone, PyTorch runs bfloat16 on generic kernels, ten to thirty times slower than
# float32 for this course's networks. So the course never asks for bfloat16
# blindly: `ddpm_lib.precision.choose` picks the device (a CUDA GPU, else Apple's `mps`, else the CPU) and the
# precision that hardware computes in fast — bfloat16 where it is native, float16 on a GPU without it, float32
# elsewhere. The chapters that train take that choice in their first cell, `hw = compute()`, and pass it to what
# they train; `generate`, which every chapter samples through, takes it by itself (its `device` and `precision`
# are `auto`); the command line does the same (`--device auto`, `--precision auto`). Which one this machine gets:

# %%
from ddpm_lib.precision import compute

hw = compute()
print(hw.describe())
assert hw.precision in ("float32", "bfloat16", "float16")

# %% [markdown]
# On a machine that computes in float32, a chapter's numbers differ a little from the ones printed in this book,
# which were computed on a CPU with bfloat16 instructions; the conclusions do not.
#
# ## 12. Conditioning on a label
#
# Time is not the only thing a denoiser can be told. A *class-conditional* model $\varepsilon_\theta(x_t, t, y)$
# also gets the digit's label $y$, and the label enters exactly as time does: a learned embedding, one row
# per class, **added to the time embedding**, so every `TimeMLP` sees both. One extra row stands for "no
# label" ($y = -1$, or `y=None`). A model trained with its labels sometimes replaced by that row learns the
# unconditional $\varepsilon_\theta(x_t, t)$ too; [chapter 10](10_guidance.py) combines the two (classifier-free guidance), and
# [chapter 11](11_putting_together.py) shows that the label alone makes a short CPU run give much better digits.
#
# `Unet(num_classes=10)` adds $(10 + 1) \times 64$ numbers to the network:

# %%
torch.manual_seed(0)
conditional = Unet(num_classes=10)
extra = count_parameters(conditional) - count_parameters(Unet())
print(f"label embedding: {tuple(conditional.label_embedding.weight.shape)}, {extra} extra parameters")
assert extra == 11 * 64
x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 500)
with torch.no_grad():
    threes, sevens = conditional(x, t, torch.full((4,), 3)), conditional(x, t, torch.full((4,), 7))
    unlabelled = conditional(x, t)
    assert torch.equal(unlabelled, conditional(x, t, torch.full((4,), -1)))  # None means "no label"
print(f"mean |ε(y=3) − ε(y=7)| before training: {(threes - sevens).abs().mean():.4f}")
assert not torch.allclose(threes, sevens)

# %% [markdown]
# Labels are checked like timesteps, and an unconditional U-Net refuses them rather than ignoring them:

# %%
for bad in (torch.full((4,), 10), torch.full((3,), 1), torch.full((4,), 1.0)):
    try:
        conditional(x, t, bad)
    except ValueError as error:
        print(f"y={bad.tolist()}: {error}")
    else:
        raise AssertionError(f"y={bad} was accepted")
try:
    Unet()(x, t, torch.zeros(4, dtype=torch.long))
except ValueError as error:
    print(f"unconditional U-Net: {error}")
else:
    raise AssertionError("an unconditional U-Net accepted labels")

# %% [markdown]
# Every sampler of chapters [06](06_sampling.py) and [08](08_fast_sampling.py) calls `model(x_t, t)`. To sample digits of chosen classes, we fix the
# labels once and hand the samplers a model that takes only $(x_t, t)$:


# %%
#| export
class Conditioned(nn.Module):
    """A class-conditional denoiser with its labels fixed: ``forward(x, t) = model(x, t, labels)``.

    ``labels`` (B,): one class per image of the batch the sampler sends (−1: no label). Any sampler that
    calls ``model(x_t, t)`` then draws digits of those classes.
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.model(x, t, self.labels)


# %%
with torch.no_grad():
    assert torch.equal(Conditioned(conditional, torch.full((4,), 3))(x, t), threes)
print("Conditioned(model, labels)(x, t) == model(x, t, labels)")

# %% [markdown]
# ## 13. Self-attention at low resolution
#
# A 3×3 convolution mixes each pixel with its neighbours; what one side of a digit should look like given
# the other side reaches it only through several layers. **Self-attention** {cite:p}`vaswani2017attention` (DDPM
# used it at 16×16 {cite:p}`ho2020ddpm`) lets every position read every other one directly, weighted by content. At each of the
# $N = H W$ positions of a feature map with $C$ channels, a 1×1 convolution of the normalised map gives a
# query $q_i$, a key $k_j$ and a value $v_j$, split into $h$ heads of $d = C / h$ channels; each head computes
#
# $$ a_{ij} = \operatorname{softmax}_j\!\left(\frac{q_i \cdot k_j}{\sqrt d}\right), \qquad
#    y_i = \sum_j a_{ij}\, v_j , $$
#
# and a last 1×1 convolution, added to the input, maps the heads back to $C$ channels. Its cost grows with
# $N^2$: 49 positions at 7×7 are cheap, 196 at 14×14 cost 16 times as much in the $N^2$ terms, and 784 at
# 28×28 would cost 256 times as much. `Unet(attention=[2])` adds a block at the bottleneck (level
# `len(dim_mults)`, 7×7), `attention=[1, 2]` one at 14×14 as well (in the encoder and the decoder block of that
# level).
#
# The output convolution starts at zero, so a freshly added block is the identity: the network starts as
# the one without attention and learns how much to use it.


# %%
#| export
class SelfAttention(nn.Module):
    r"""Multi-head self-attention over the H·W positions of a feature map, with a residual connection.

    y = x + W_o · MHA(q, k, v),  [q, k, v] = W_qkv · norm(x); W_qkv and W_o are 1×1 convolutions; there are
    max(1, C // ``head_dim``) heads, which must split the C channels evenly; W_o starts at zero (the block
    starts as the identity). (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, channels: int, head_dim: int = 32, norm: str = "group"):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(
                f"channels ({channels}) must split evenly into {self.heads} heads (head_dim {head_dim})"
            )
        self.norm = make_norm(norm, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each (B, heads, H·W, C / heads)."""
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        return qkv.transpose(-1, -2).unbind(1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """a_ij, (B, heads, H·W, H·W): how much query position i reads from key position j (rows sum to 1)."""
        q, k, _ = self.qkv_heads(x)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H·W, d)
        return x + self.out(y.transpose(-1, -2).reshape(x.shape))


# %% [markdown]
# Two checks: the fused `scaled_dot_product_attention` agrees with the formula written out, and a U-Net with
# a fresh attention block computes exactly what the same U-Net without it computes.

# %%
torch.manual_seed(13)
block = SelfAttention(64)
nn.init.normal_(block.out.weight, std=0.1)  # a block that does something
features = torch.randn(2, 64, 7, 7)
weights = block.attention_weights(features)
_, _, values = block.qkv_heads(features)
by_hand = features + block.out((weights @ values).transpose(-1, -2).reshape(features.shape))
with torch.no_grad():
    gap = (block(features) - by_hand).abs().max().item()
print(f"{block.heads} heads; attention rows sum to 1: {torch.allclose(weights.sum(-1), torch.ones(1))}; "
      f"fused vs by hand: {gap:.1e}")  # fmt: skip
assert gap < 1e-5

plain = Unet(units_per_block=2, mid_units=2)
attending = Unet(units_per_block=2, mid_units=2, attention=[2])
missing, unexpected = attending.load_state_dict(plain.state_dict(), strict=False)
assert not unexpected and all(name.startswith("mid_attention.") for name in missing)
x_probe, t_probe = torch.randn(4, 1, 28, 28), torch.randint(0, 1000, (4,))
with torch.no_grad():
    assert torch.equal(plain.eval()(x_probe, t_probe), attending.eval()(x_probe, t_probe))
print(f"new parameters: {', '.join(missing)} ({count_parameters(attending) - count_parameters(plain):,} in all); "
      f"output unchanged at initialisation")  # fmt: skip

# %% [markdown]
# **What it costs.** `torch.utils.flop_counter` counts the floating-point operations of one forward pass;
# the timing runs forward and backward on a training batch, as in section 11 (the full measurement, with
# the optimiser step and sampling, is `python benchmarks/unet_throughput.py`).

# %%
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


def forward_flops(net: nn.Module) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops()


attention_variants = {
    "no attention": Unet(units_per_block=2, mid_units=2),
    "7x7 (attention=[2])": Unet(units_per_block=2, mid_units=2, attention=[2]),
    "7x7 and 14x14 (attention=[1, 2])": Unet(units_per_block=2, mid_units=2, attention=[1, 2]),
}
attention_batch = torch.randn(PROFILE.norm_study_batch_size, 1, 28, 28)
attention_t = torch.randint(0, 1000, (len(attention_batch),))
attention_seconds = {name: [] for name in attention_variants}
for repeat in range(2 + PROFILE.unit_timing_steps):  # interleaved; the first two repeats warm up
    for name, net in attention_variants.items():
        start = time.perf_counter()
        net.train()(attention_batch, attention_t).pow(2).mean().backward()
        if repeat >= 2:
            attention_seconds[name].append(time.perf_counter() - start)
base_flops = forward_flops(attention_variants["no attention"])
base_rate = len(attention_batch) / statistics.median(attention_seconds["no attention"])
print(f"{'two dense units per block':34s} {'parameters':>10s} {'MFLOPs/image':>13s} {'train images/s':>15s}")
for name, net in attention_variants.items():
    flops, rate = forward_flops(net), len(attention_batch) / statistics.median(attention_seconds[name])
    print(f"{name:34s} {count_parameters(net):10,d} {flops / 1e6:9.1f} ({flops / base_flops:4.2f}x) "
          f"{rate:8.0f} ({rate / base_rate:4.2f}x)")  # fmt: skip
assert forward_flops(attention_variants["7x7 (attention=[2])"]) < 1.1 * base_flops

# %% [markdown]
# At 7×7 the block adds a few percent of the operations; at 14×14 the $N^2$ terms start to show. Wall time
# on a CPU moves more than the count suggests, because attention is a few large matrix products between
# many small convolutions (the fused kernel helps). [Chapter 11](11_putting_together.py)'s benchmark of denoisers trains each variant
# for the same CPU time and measures what the block buys in samples.
#
# **What attends to what.** The shipped unconditional model `ddpm_mnist` has a block at 7×7. For a noisy
# digit at $t = 300$ we show, for three query positions (the red square), the attention weights over the
# 7×7 keys, averaged over the heads and drawn over the digit (each key position covers 4×4 pixels).

# %%
shipped, shipped_scheduler, _ = load_pretrained("ddpm_mnist")
assert 2 in shipped.config["attention"], shipped.config
captured = {}
hook = shipped.mid_attention.register_forward_hook(
    lambda module, inputs, output: captured.update(weights=module.attention_weights(inputs[0]))
)
probe_digit = load_mnist("heldout", verbose=False).tensors[0][:1]
noisy = q_sample(
    shipped_scheduler,
    probe_digit,
    300,
    torch.randn(probe_digit.shape, generator=torch.Generator().manual_seed(4)),
)
with torch.no_grad():
    shipped.eval()(noisy, torch.tensor([300]))
hook.remove()
attention_map = captured["weights"][0].mean(0)  # (49, 49), averaged over heads
queries = [(1, 3), (3, 3), (5, 2)]
fig, axes = plt.subplots(1, 4, figsize=(8, 2.3))
axes[0].imshow(noisy[0, 0], cmap="gray")
axes[0].set_title("x_t, t = 300", fontsize=9)
for ax, (row, col) in zip(axes[1:], queries, strict=True):
    heat = attention_map[row * 7 + col].reshape(7, 7)
    ax.imshow(probe_digit[0, 0], cmap="gray", alpha=0.6)
    ax.imshow(heat.repeat_interleave(4, 0).repeat_interleave(4, 1), cmap="magma", alpha=0.6)
    ax.add_patch(plt.Rectangle((col * 4 - 0.5, row * 4 - 0.5), 4, 4, fill=False, ec="red", lw=1.5))
    ax.set_title(f"query ({row}, {col}): max {heat.max():.2f}", fontsize=9)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "04_attention_map")
plt.show()
spread = (attention_map > 1 / 49).sum(-1).float().mean().item()
print(f"a query reads more than the uniform share 1/49 from {spread:.1f} of the 49 key positions on average")

# %% [markdown]
# ## Summary
#
# - The denoiser $\varepsilon_\theta(x_t, t)$ maps an image and a timestep to an image of the same
#   shape. $t$ enters as an embedding — fixed sinusoids + an MLP, or a learned table — that a
#   `TimeMLP` adds to every pixel of each block's feature map.
# - ShuffleNet v2 units do most of their work with depthwise convolutions on half of the channels
#   and mix the halves with a channel shuffle; the dense unit does the same job with one 3×3
#   convolution and is faster on a CPU.
# - Encoder blocks go down (28 → 14 → 7) and hand a skip to the decoder block of the same level,
#   which up-samples, concatenates and refines. The reference configuration has 261,873 parameters.
# - BatchNorm makes the output depend on the mode and on the batch; in a denoiser the batches a
#   sampler sends differ from the ones training saw. GroupNorm has no such gap; we measured what it
#   costs and made it the default.
# - `ddpm_lib.unet.Unet(**REFERENCE_CONFIG)` rebuilds the reference; `Unet()` is the course's model.
# - `Unet(num_classes=10)` is class-conditional: a label embedding (plus a "no label" row) is added to the
#   time embedding; `Conditioned(model, labels)` fixes the labels so any sampler can use it.
# - `Unet(attention=[2])` adds multi-head self-attention at the 7×7 bottleneck: every position reads every
#   other one, weighted by content, for a few percent more operations; `Unet(prediction="v")` records that the
#   network outputs $v$ instead of $\varepsilon$ ([chapter 02](02_forward_process.py), section 6).
#
# ## Exercises
#
# Each exercise has a cell for your solution and, right after it, a cell that checks it (its first
# line is `# Check`). The solution between the two marker comments is ours: try
# the exercise before you read it. In the student copies an instructor hands out, it is replaced by
# `raise NotImplementedError()`, and the check fails until you write your own.
#
# :::{exercise} 4.1 · ★☆☆ · Undo the shuffle
# :nonumber:
#
# Write `unshuffle_channels(x, groups)` that undoes `ChannelShuffle(groups)`: for every `x` with a
# channel count divisible by `groups`, `unshuffle_channels(ChannelShuffle(groups)(x), groups)` is `x`.
# Hint: the inverse of "reshape to $(g, C/g)$ and transpose" is "reshape to $(C/g, g)$ and transpose".
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def unshuffle_channels(x: torch.Tensor, groups: int) -> torch.Tensor:
    ### BEGIN SOLUTION
    batch, channels, height, width = x.shape
    x = x.view(batch, channels // groups, groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 4.1
x = torch.randn(2, 8, 3, 3)
assert torch.equal(unshuffle_channels(ChannelShuffle(2)(x), 2), x)
assert torch.equal(unshuffle_channels(ChannelShuffle(4)(x), 4), x)
### BEGIN HIDDEN TESTS
x = torch.randn(1, 12, 2, 2)
assert torch.equal(unshuffle_channels(ChannelShuffle(3)(x), 3), x)
assert not torch.equal(unshuffle_channels(x, 3), x)  # not the identity
### END HIDDEN TESTS
print("Exercise 4.1 passed")

# %% [markdown]
# :::{exercise} 4.2 · ★★☆ · The paper's basic unit
# :nonumber:
#
# In the ShuffleNet v2 paper the basic unit keeps $C$ channels, passes the first half $x_1$ through
# **unchanged** and sends only $x_2$ through `1×1 conv → norm → SiLU → depthwise 3×3 → norm → 1×1 conv
# → norm → SiLU` (all $C/2$ channels wide), then concatenates $[x_1, \text{branch}(x_2)]$ and shuffles
# with 2 groups. Build `PaperShuffleUnit(channels, norm)` from `ConvNormAct`, `make_norm` and
# `ChannelShuffle`. The check asks that half of the output channels are exactly the input's first
# half, and that the unit has fewer parameters than the reference's `ShuffleUnit(C, C)`.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
class PaperShuffleUnit(nn.Module):
    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        ### BEGIN SOLUTION
        half = channels // 2
        self.branch = nn.Sequential(
            ConvNormAct(half, half, 1, norm=norm),
            nn.Conv2d(half, half, 3, 1, 1, groups=half),
            make_norm(norm, half),
            ConvNormAct(half, half, 1, norm=norm),
        )
        self.channel_shuffle = ChannelShuffle(2)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        x1, x2 = x.chunk(2, dim=1)
        return self.channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1))
        ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 4.2
unit = PaperShuffleUnit(16)
x = torch.randn(2, 16, 7, 7)
y = unit(x)
assert y.shape == x.shape
assert torch.equal(y[:, 0::2], x[:, :8])  # after the shuffle, the untouched half sits in the even channels
assert count_parameters(unit) < count_parameters(ShuffleUnit(16, 16))
### BEGIN HIDDEN TESTS
y_group = PaperShuffleUnit(32, norm="group")(torch.randn(3, 32, 14, 14))
assert y_group.shape == (3, 32, 14, 14)
assert any(isinstance(m, nn.Conv2d) and m.groups == 16 for m in PaperShuffleUnit(32).modules())  # depthwise
assert not torch.allclose(y[:, 1::2], x[:, 8:])  # the other half is transformed
### END HIDDEN TESTS
print("Exercise 4.2 passed")

# %% [markdown]
# :::{exercise} 4.3 · ★★★ · What BatchNorm does have going for it
# :nonumber:
#
# In eval mode BatchNorm is a fixed per-channel affine map,
# $\mathrm{BN}(z) = \gamma\,(z - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta$ with the running $\mu, \sigma^2$,
# so it can be **folded** into the convolution before it — one operation instead of two at inference.
# GroupNorm's statistics depend on each input, so it can't. Write `fold_batchnorm(conv, bn)` returning
# a new `nn.Conv2d` (same shape and `groups`, always with a bias) such that
# `folded(x) == bn(conv(x))` with `bn` in eval mode. It must work for convolutions without bias and
# for depthwise ones. Then answer in the cell after the check: how many operations would folding save in
# `Unet(**REFERENCE_CONFIG)`? (Count from section 11.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    ### BEGIN SOLUTION
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 4.3
def random_batchnorm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return bn.eval()


torch.manual_seed(3)
conv, bn = nn.Conv2d(4, 6, 3, padding=1), random_batchnorm(6)
x = torch.randn(2, 4, 9, 9)
folded = fold_batchnorm(conv, bn)
assert isinstance(folded, nn.Conv2d) and folded.bias is not None
assert torch.allclose(folded(x), bn(conv(x)), atol=1e-5)
### BEGIN HIDDEN TESTS
depthwise, bn = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False), random_batchnorm(6)
x = torch.randn(2, 6, 8, 8)
assert torch.allclose(fold_batchnorm(depthwise, bn)(x), bn(depthwise(x)), atol=1e-5)
assert fold_batchnorm(depthwise, bn).groups == 6
### END HIDDEN TESTS
print("Exercise 4.3 passed")

# %% [markdown]
# **Your answer (4.3, 1 point, graded by hand).** How many operations would folding save in Unet(**REFERENCE_CONFIG)?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# Every one of the reference's BatchNorm layers comes straight after a convolution (in
# ConvNormAct, and after each depthwise convolution), so each can be folded: section 11 counts 117
# convolutions and 116 norm layers, and folding removes all 116 — half of the 233 conv and norm operations,
# each a separate pass over memory. It is the one speed advantage BatchNorm keeps at inference, and it does
# not touch the train/eval mismatch of section 10, which is why the course still prefers GroupNorm.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: every BatchNorm follows a convolution and can be folded: 116 of the 233 conv and norm operations (section 11's counts), each a pass over memory.
# - **½ point**: the right idea with a wrong count, or the count without saying why every norm layer can be folded.
# - **0**: a count of parameters instead of operations, or no count.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 4.4 · ★★☆ · Does the network read the clock?
# :nonumber:
#
# Every block of the U-Net is told $t$. Does a trained network use it? The course ships a larger configuration of
# this U-Net trained — two units per block, self-attention at 7×7, $v$-prediction ([chapter 11](11_putting_together.py)'s recipe;
# `load_pretrained()` loads it and `ddpm_lib/weights/ddpm_mnist_cond.json` records how it was trained). Write `told_loss(model, scheduler, x0, noise, t_true, t_told)`:
# the mean squared error of the noise prediction when `x0` is noised to `t_true` with `noise` but the network is
# told `t_told`. (The shipped network predicts $v$; [chapter 02](02_forward_process.py)'s `convert_prediction` turns its output into
# $\hat\varepsilon$, with the $\bar\alpha_t$ of the $t$ it is told, and `prediction_of(model)` says what it
# predicts.) The check prints the losses for every pair of $t$ in (10, 100, 300, 600, 900), one row per true
# $t$. Why does a wrong clock hurt, and why do some wrong clocks hurt far less than others? (Hint: how much of
# $x_t$ is noise at each $t$? Print $\bar\alpha_t$.)
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def told_loss(model, scheduler, x0: torch.Tensor, noise: torch.Tensor, t_true: int, t_told: int) -> float:
    ### BEGIN SOLUTION
    timesteps = torch.full((len(x0),), t_told)
    with torch.no_grad():
        x_t = q_sample(scheduler, x0, torch.full((len(x0),), t_true), noise)
        output = model(x_t, timesteps)
        eps_hat = convert_prediction(output, x_t, scheduler.alpha_bars64[t_told], prediction_of(model), "eps")
        return (eps_hat - noise).pow(2).mean().item()
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 4.4
trained, trained_scheduler, _ = load_pretrained()
clock_digits = heldout_images[:64]
clock_noise = torch.randn(clock_digits.shape, generator=torch.Generator().manual_seed(2))
clock_ts = (10, 100, 300, 600, 900)
table = [
    [told_loss(trained, trained_scheduler, clock_digits, clock_noise, a, b) for b in clock_ts]
    for a in clock_ts
]
print("true t \\ told t " + "".join(f"{b:>8d}" for b in clock_ts))
for a, row in zip(clock_ts, table, strict=True):
    print(f"{a:>15d} " + "".join(f"{value:8.4f}" for value in row))
assert all(min(row) == row[i] for i, row in enumerate(table))  # the true clock is always the best one
### BEGIN HIDDEN TESTS
with torch.no_grad():
    x_t = q_sample(trained_scheduler, clock_digits, torch.full((64,), 300), clock_noise)
    eps_100 = convert_prediction(
        trained(x_t, torch.full((64,), 100)), x_t, trained_scheduler.alpha_bars64[100], prediction_of(trained)
    )
    expected = (eps_100 - clock_noise).pow(2).mean().item()
assert abs(told_loss(trained, trained_scheduler, clock_digits, clock_noise, 300, 100) - expected) < 1e-6
### END HIDDEN TESTS
print("Exercise 4.4 passed")

# %% [markdown]
# **Your answer (4.4, 1 point, graded by hand).** Why does a wrong clock hurt, and why do some wrong clocks hurt far less than others?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# The network has to split x_t = √ᾱ x_0 + √(1 − ᾱ) ε into digit and noise, and the clock tells
# it the proportions. Told a smaller t than the truth, it expects a clearer digit than there is and calls
# part of the noise "digit"; told a larger t, it expects more noise and calls part of the digit "noise".
# Either way the split is wrong, and the loss rises many times over the diagonal. Mix-ups between two t at
# which x_t is almost all noise cost little (ᾱ_600 ≈ 0.026 and ᾱ_900 ≈ 0.0003: at both, ε ≈ x_t is nearly
# the right answer), while the same-sized mistakes where the digit is still visible cost a lot. The clock
# matters most where the proportions change fastest relative to their size: at small and middle t.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: the clock gives the proportions of digit and noise in x_t, so a wrong t splits x_t wrongly; mix-ups between two t where x_t is nearly all noise (ᾱ tiny) cost little, mistakes where the digit is visible cost a lot.
# - **½ point**: explains one of the two (why it hurts, or which mix-ups are cheap) with a reason.
# - **0**: describes the printed table without a reason.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
