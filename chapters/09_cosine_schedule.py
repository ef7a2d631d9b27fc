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
# # 09 · The cosine schedule
#
# [Chapter 01](01_noise_schedule.py) took the noise schedule from DDPM {cite:p}`ho2020ddpm`: $\beta_t$ rises linearly from $10^{-4}$ to
# $0.02$. {cite:t}`nichol2021improved` (§3.2) noticed that on small images this schedule destroys the signal too
# early: a large share of the 1000 steps is spent on images that are already almost pure noise, and skipping
# them costs little. They proposed to choose $\bar\alpha_t$ directly, as a squared cosine that falls slowly at
# both ends. Symbols are those of the [notation](../notation.md) page.
#
# **After this chapter you can**
#
# - define a schedule by its $\bar\alpha_t$ rather than by its $\beta_t$, and convert one into the other;
# - build `CosineScheduler` on [chapter 01](01_noise_schedule.py)'s `NoiseSchedule`, and check it against `diffusers`
#   (`beta_schedule="squaredcos_cap_v2"`);
# - compare schedules by their $\bar\alpha$ and log-SNR curves, and say where each one spends its steps;
# - train with either schedule (`python -m ddpm_lib train --schedule cosine`) and sample with every sampler of
#   chapters [06](06_sampling.py) and [08](08_fast_sampling.py), unchanged;
# - measure what the schedule changes in the samples, with [chapter 07](07_evaluation.py)'s metrics.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import math
import numbers
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_lib.data import load_mnist
from ddpm_lib.diffusion import q_sample
from ddpm_lib.generation import generate
from ddpm_lib.metrics import baseline_images, draw_difference, evaluate_images, format_table
from ddpm_lib.plotting import save_figure, to_image
from ddpm_lib.pretrained import load_classifier, load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.sampling import sample, sample_clip
from ddpm_lib.schedule import LinearBetaScheduler, NoiseSchedule

torch.manual_seed(0)
T = 1000
linear = LinearBetaScheduler(T)
print(f"profile: {PROFILE.name}")

# %% [markdown]
# ## 1. Choose $\bar\alpha$, derive $\beta$
#
# Every table of [chapter 01](01_noise_schedule.py) follows from $\beta_0, \dots, \beta_{T-1}$, and $\bar\alpha_t = \prod_{s \le t}(1-\beta_s)$
# determines them back: $\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}$. So a schedule can just as well be given
# by the curve $\bar\alpha$ it should follow. The cosine schedule uses
#
# $$ f(u) = \cos^2\!\left(\frac{u + s}{1 + s}\cdot\frac{\pi}{2}\right), \qquad
#    \bar\alpha_t = \frac{f\big((t+1)/T\big)}{f(0)}, \qquad
#    \beta_t = 1 - \frac{f\big((t+1)/T\big)}{f\big(t/T\big)}, $$
#
# with $u = (t+1)/T$ the fraction of the chain done *after* step $t$ (our index runs $t = 0..T-1$, and
# $x_t$ is the image after step $t$). Two details:
#
# - **the offset** $s = 0.008$ keeps $\beta_0$ from being vanishingly small. Without it $\beta_0 = 1 - \cos^2(\pi/2T)
#   \approx 2.5 \times 10^{-6}$, and the first step's noise, $\sqrt{\beta_0} \approx 0.0016$, would be a fifth of the
#   quantisation step of an 8-bit image ($1/127.5$ in our $[-1, 1]$ range): far too little to learn anything from.
#   Nichol & Dhariwal chose $s$ so that $\sqrt{\beta_0}$ sits just below one such step (the check below prints it);
# - **the cap** $\beta_t \le 0.999$: at $u = 1$, $f = 0$ and the last $\beta$ would be exactly 1 (and
#   $\bar\alpha_{T-1} = 0$). Capping keeps every $\alpha_t > 0$, so nothing divides by zero.


# %%
#| export schedule
class CosineScheduler(NoiseSchedule):
    r"""The cosine schedule of Nichol & Dhariwal (2021): ᾱ_t = f((t+1)/T) / f(0), f(u) = cos²((u+s)/(1+s)·π/2).

    β_t = min(1 − f((t+1)/T) / f(t/T), ``max_beta``), computed in float64 and stored as float32 exactly as
    ``diffusers``' ``beta_schedule="squaredcos_cap_v2"`` does; every other table is :class:`NoiseSchedule`'s.
    """

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if (
            isinstance(num_timesteps, bool)
            or not isinstance(num_timesteps, numbers.Integral)
            or num_timesteps < 1
        ):
            raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0 <= s < 1:
            raise ValueError(f"s must be a number in [0, 1), got {s!r}")
        if isinstance(max_beta, bool) or not isinstance(max_beta, numbers.Real) or not 0 < max_beta < 1:
            raise ValueError(f"max_beta must be a number in (0, 1), got {max_beta!r}")
        self.s, self.max_beta = float(s), float(max_beta)

        def f(u: float) -> float:
            return math.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2

        steps = int(num_timesteps)
        betas = [min(1 - f((t + 1) / steps) / f(t / steps), self.max_beta) for t in range(steps)]
        super().__init__(torch.tensor(betas, dtype=torch.float32), torch.tensor(betas, dtype=torch.float64))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_timesteps={self.num_timesteps}, s={self.s}, max_beta={self.max_beta})"
        )


#: schedule name -> class, for ``make_schedule`` and ``python -m ddpm_lib train --schedule``
SCHEDULES = {"linear": LinearBetaScheduler, "cosine": CosineScheduler}


def make_schedule(name: str = "linear", num_timesteps: int = 1000) -> NoiseSchedule:
    """The schedule called ``name`` (``"linear"``: chapter 01's defaults; ``"cosine"``) with T steps."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}; got {name!r}")
    return SCHEDULES[name](num_timesteps)


# %% [markdown]
# The class only says how $\beta$ is made; [chapter 01](01_noise_schedule.py)'s base class derives $\alpha$, $\bar\alpha$, the posterior
# tables and the SNR. Two checks: $\bar\alpha_t$ follows the formula, and the cap bites at one step only.
# (`tests/test_schedule.py` also compares every table with `diffusers`' `DDPMScheduler(beta_schedule=
# "squaredcos_cap_v2")`.)

# %%
cosine = CosineScheduler(T)
print(cosine)


def f(u):
    return np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2


formula = f((np.arange(T) + 1) / T) / f(0)
capped = int((cosine.betas >= 0.999 - 1e-6).sum())
print(
    f"max |alpha_bar - formula| over t < T-1: {np.abs(cosine.alpha_bars[:-1].double().numpy() - formula[:-1]).max():.1e}"
)
print(f"capped betas: {capped} (t = T-1); alpha_bar_T-1 = {cosine.alpha_bars[-1]:.2e}")
print(
    f"beta_0: cosine {cosine.betas[0]:.2e} (sqrt {cosine.betas[0].sqrt():.4f}), linear {linear.betas[0]:.1e}"
)
assert np.allclose(cosine.alpha_bars[:-1].double().numpy(), formula[:-1], rtol=1e-4, atol=1e-7)
assert capped == 1 and cosine.alpha_bars[-1] < 1e-7
assert cosine.betas[0].sqrt() < 1 / 127.5  # the first step's noise is below one grey level

# %% [markdown]
# ## 2. Where each schedule spends its steps
#
# Left: the signal coefficient $\sqrt{\bar\alpha_t}$ — how long each schedule keeps the digit visible; middle:
# $\log_{10}$ SNR; right: $\beta_t$, the noise each step adds. The cell after the figure reads the numbers off.

# %%
schedules = {"linear": linear, "cosine": cosine}
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for name, schedule in schedules.items():
    axes[0].plot(schedule.alpha_bars.sqrt(), label=name)
    axes[1].plot(schedule.snr.log10(), label=name)
    axes[2].plot(schedule.betas, label=name)
axes[0].set_title(r"signal coefficient $\sqrt{\bar\alpha_t}$")
axes[1].set_title(r"$\log_{10}$ SNR$(t)$")
axes[2].set_title(r"per-step noise $\beta_t$")
axes[2].set_yscale("log")
for ax in axes:
    ax.set_xlabel("t")
    ax.legend()
fig.tight_layout()
save_figure(fig, "09_schedules")
plt.show()

# %%
rows = {}
for name, schedule in schedules.items():
    rows[name] = {
        "t at SNR = 1": int(torch.nonzero(schedule.snr < 1)[0]),
        "steps with alpha_bar < 0.01": int((schedule.alpha_bars < 0.01).sum()),
        "share of the chain": float((schedule.alpha_bars < 0.01).float().mean()),
        "sqrt(alpha_bar) at t = 500": float(schedule.alpha_bars[500].sqrt()),
        "log10 SNR at T-1": float(schedule.snr[-1].log10()),
    }
for key in rows["linear"]:
    print(f"{key:>28}: linear {rows['linear'][key]:9.3f}   cosine {rows['cosine'][key]:9.3f}")
assert rows["cosine"]["t at SNR = 1"] > rows["linear"]["t at SNR = 1"]  # the digit survives longer
assert rows["cosine"]["steps with alpha_bar < 0.01"] < rows["linear"]["steps with alpha_bar < 0.01"] / 2
assert 0.3 < rows["linear"]["share of the chain"] < 0.36 and rows["cosine"]["share of the chain"] < 0.07

# %% [markdown]
# Under the linear schedule the SNR falls through 1 a quarter of the way through the chain ($t = 259$), and for
# about the last third of the steps (327 of 1000) $\bar\alpha < 0.01$: those steps turn noise into slightly
# different noise. The cosine schedule crosses SNR = 1 at the middle and spends only its last 65 steps below
# $\bar\alpha = 0.01$; its log-SNR is close to a straight line through most of the chain, so the steps are spread
# evenly over noise levels. It also ends lower: its last SNR is about $10^{-9}$ rather than $4 \cdot 10^{-5}$, which
# is nearer to the pure noise sampling starts from.
#
# The forward process itself is the same code: `q_sample` reads $\bar\alpha_t$ from whatever schedule it gets,
# and the variance stays 1.

# %%
x0 = load_mnist("heldout", verbose=False).tensors[0][:256]
generator = torch.Generator().manual_seed(1)
for name, schedule in schedules.items():
    variances = []
    for t in (0, 250, 500, 750, 999):
        noise = torch.randn(x0.shape, generator=generator)
        x_t = q_sample(schedule, x0, torch.full((len(x0),), t), noise)
        variances.append(float(x_t.var()))
    print(f"{name:>7}: Var(x_t) at t = 0, 250, 500, 750, 999: " + ", ".join(f"{v:.3f}" for v in variances))

# %% [markdown]
# (At $t = 0$ the variance is that of the digits themselves, about 0.4; it rises to 1 as noise replaces signal,
# and the cosine schedule gets there later.)
#
# ## 3. Every sampler works with either schedule
#
# The samplers of chapters [06](06_sampling.py) and [08](08_fast_sampling.py) read $\beta$, $\bar\alpha$ and the posterior tables from the schedule they
# are given and nothing else, so they need no change. A quick proof with a stand-in network: for a "perfect
# denoiser" that knows the $x_0$ a chain started from, one step of `sample()` from $t$ must land on
# $q(x_{t-1} \mid x_t, x_0)$'s mean plus $\tilde\beta_t$ noise — whatever the schedule.


# %%
class Oracle(torch.nn.Module):
    """Predicts the exact noise of x_t = √ᾱ x0 + √(1-ᾱ) ε for a known x0 (a perfect denoiser)."""

    def __init__(self, schedule: NoiseSchedule, x0: torch.Tensor):
        super().__init__()
        self.schedule, self.x0 = schedule, x0
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # samplers ask the model for its device

    def forward(self, x, t):
        t = int(torch.as_tensor(t).reshape(-1)[0])
        alpha_bar = self.schedule.alpha_bars[t]
        return (x - alpha_bar.sqrt() * self.x0) / (1 - alpha_bar).sqrt()


x0 = x0[:64]
for name, schedule in schedules.items():
    oracle = Oracle(schedule, x0)
    t = 600
    x_t = q_sample(schedule, x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=generator))
    for step in (sample, sample_clip):
        x_prev = step(schedule, t, oracle, x_t, torch.Generator().manual_seed(2))
        mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x_t
        residual_std = float((x_prev - mean).std())
        print(f"{name:>7} {step.__name__:>11}: std of x_(t-1) - posterior mean {residual_std:.4f}, "
              f"sqrt(posterior variance) {schedule.posterior_variances[t].sqrt():.4f}")  # fmt: skip
        assert abs(residual_std / schedule.posterior_variances[t].sqrt() - 1) < 0.02

# %% [markdown]
# ## 4. A model trained with it
#
# A schedule is a training decision: the network learns $\varepsilon$ at the noise levels the schedule visits.
# To see what it changes, the course ships two short runs of [chapter 05](05_training.py)'s training loop that differ *only* in
# `--schedule`: 2,200 steps of batch 64, unconditional, predicting $\varepsilon$, with the optimiser, EMA and loss
# weighting that [chapter 11](11_putting_together.py)'s quick recipe uses — the `--preset quick` of the time they were trained, which has
# since gained self-attention and $v$-prediction. Short runs, so read the comparison as "what changes in a short
# CPU run", not as a verdict at convergence. Each comes with the command that trained it and, since the preset
# changed, the command that trains the same network today:

# %%
models = {}
for name in schedules:
    model, schedule, record = load_pretrained(f"ddpm_mnist_short_{name}")
    models[name] = (model.requires_grad_(False), schedule)
    minutes = record["training_wall_time_s"] / 60
    print(f"{name:>7}: {type(schedule).__name__}, {record['summary']}, {minutes:.0f} min on 2 CPU cores")
    print(f"         trained by: {record['command']}")
    print(f"         the same today: {record['command_now']}")
    assert f"--schedule {name}" in record["command"] and "--prediction eps" in record["command_now"]
assert type(models["cosine"][1]).__name__ == "CosineScheduler" and torch.equal(
    models["cosine"][1].betas, cosine.betas
)

# %% [markdown]
# Where does each model make its errors? The loss per noise level on held-out digits: for each $t$ bucket, the
# mean squared error of the predicted noise. The two models see different images at the same $t$, so we compare
# them at the same **signal-to-noise ratio** instead: bucket by $\log_{10}$ SNR.

# %%
heldout = load_mnist("heldout", verbose=False).tensors[0]
n_loss = min(len(heldout), PROFILE.schedule_loss_digits)
edges = np.linspace(-4, 2, 7)
per_snr = {}
with torch.no_grad():
    for name, (model, schedule) in models.items():
        g = torch.Generator().manual_seed(3)
        t = torch.randint(0, T, (n_loss,), generator=g)
        noise = torch.randn((n_loss, 1, 28, 28), generator=g)
        x_t = q_sample(schedule, heldout[:n_loss], t, noise)
        error = (model(x_t, t) - noise).pow(2).flatten(1).mean(1).numpy()
        log_snr = schedule.snr[t].log10().numpy()
        bucket = np.digitize(log_snr, edges)
        per_snr[name] = [float(error[bucket == b].mean()) if (bucket == b).any() else float("nan")
                         for b in range(1, len(edges))]  # fmt: skip
labels = [f"{lo:+.0f}..{hi:+.0f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
print(f"{n_loss} held-out digits, one random t each; ε-prediction MSE per log10 SNR bucket")
print(f"{'log10 SNR':>10} " + " ".join(f"{label:>8}" for label in labels))
for name, values in per_snr.items():
    print(f"{name:>10} " + " ".join(f"{v:8.4f}" for v in values))
assert all(np.isfinite(v) for v in per_snr["cosine"][1:-1])

# %% [markdown]
# Now the samples: the same seeds, [chapter 06](06_sampling.py)'s `sample_clip()` on a 100-step respaced chain ([chapter 08](08_fast_sampling.py)) for both,
# scored by [chapter 07](07_evaluation.py)'s metrics next to the real-vs-real floor. Why the clipped sampler? Look at what
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ does to an error in $\hat\varepsilon$ at the
# first step, $t = T-1$: it multiplies it by $\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t} = 1/\sqrt{\mathrm{SNR}_t}$.

# %%
for name, schedule in schedules.items():
    print(f"{name:>7}: alpha_bar[T-1] = {schedule.alpha_bars[-1]:.2e}, "
          f"an error in eps is multiplied by {1 / schedule.snr[-1].sqrt():,.0f} in x0_hat")  # fmt: skip
assert 1 / cosine.snr[-1].sqrt() > 100 / linear.snr[-1].sqrt()

# %% [markdown]
# The linear schedule's last $\bar\alpha$ is $4 \cdot 10^{-5}$; the cosine schedule's, capped through $\beta \le 0.999$, is
# $2 \cdot 10^{-9}$: a network that predicts the noise to within a tenth of a percent still puts errors of tens of
# units into every pixel of $\hat x_0$. `sample_clip()` clamps $\hat x_0$ to $[-1, 1]$ before it is used; unclipped
# DDPM, DDIM and DPM-Solver++ carry the error into the next step. The third row below is the cosine model with
# unclipped `sample()` on the same chain — the same network, the same noise. In the full profile (256 digits
# per row) the next cell takes about a minute and a half on a 2-core laptop, with a progress bar per chain:

# %%
n_eval = PROFILE.schedule_eval_samples
started = time.perf_counter()
samples = {
    f"{name} schedule": generate(
        model, schedule, n_eval, sampler="clip", steps=100, seed=1, progress=PROFILE.progress
    )
    for name, (model, schedule) in models.items()
}
samples["cosine, unclipped sample()"] = generate(
    *models["cosine"], n_eval, sampler="ddpm", steps=100, seed=1, progress=PROFILE.progress
)
samples["real digits (floor)"] = baseline_images(n_eval, seed=1)["real digits (floor)"]
classifier, _ = load_classifier()
results = evaluate_images(classifier, samples, heldout, PROFILE.eval_draws)
print(
    f"{n_eval} samples per row; 100-step sample_clip() unless the row says otherwise; "
    f"sampled and scored in {time.perf_counter() - started:.0f} s"
)
print(format_table(results))
difference, standard_error = draw_difference(results["cosine schedule"], results["linear schedule"])
print(f"cosine minus linear, Fréchet distance per draw: {difference:+.1f} ± {standard_error:.1f} (s.e.)")

# %%
rows = [f"{name} schedule" for name in schedules] + ["cosine, unclipped sample()"]
n_show = min(16, n_eval)
fig, axes = plt.subplots(len(rows), n_show, figsize=(0.9 * n_show, 1.1 * len(rows)), squeeze=False)
for row, name in enumerate(rows):
    for column in range(n_show):
        axes[row, column].imshow(to_image(samples[name][column]), cmap="gray")
        axes[row, column].axis("off")
    axes[row, 0].set_title(name, fontsize=8, loc="left")
fig.tight_layout()
save_figure(fig, "09_samples")
plt.show()
confident = {name: results[name]["confident_share"] for name in rows}
print("confident share: " + ", ".join(f"{k} {v:.1%}" for k, v in confident.items()))
assert all(samples[name].abs().max() <= 1 for name in rows)
if n_eval >= 100:  # what the text below reads off the table, where the samples are enough to show it
    assert confident["cosine, unclipped sample()"] < 0.1 < 0.5 < confident["cosine schedule"]

# %% [markdown]
# **What the measurement says.** The shipped short runs `ddpm_mnist_short_linear` and `ddpm_mnist_short_cosine`,
# 256 samples per row; the numbers below are the ones the table above prints in the full profile (about a minute
# and a half for the chapter on two CPU cores, as it samples the shipped runs and does not train them). The per-draw means sit above the distances of all 256 samples
# because a Fréchet distance from fewer samples is biased upwards ([chapter 07](07_evaluation.py)); compare rows within a column.
#
# - **On a short run, the schedule is not the bottleneck.** With the same recipe, the same 2,200 steps and the
#   same seeds, the two models are equally often confidently classified (73.8% and 74.2%), and their Fréchet
#   distances per draw differ by 16.2 ± 33.6: well within chance. The per-SNR loss table above says the same
#   from the other side: the two networks make nearly the same errors at the same signal-to-noise ratio. What
#   limits these models is training time, not where the schedule puts its steps. (Nichol & Dhariwal's gains
#   from the cosine schedule were measured in log-likelihood, on larger images trained far longer. The many steps
#   the linear schedule spends near pure noise — section 2 — are cheap to learn: there $\varepsilon \approx x_t$, and
#   both models' errors in the lowest SNR buckets are 0.002 or less.)
# - **The sampler has to match the schedule.** The same cosine network, sampled without clipping, gives pure
#   noise — every digit lost at the first step, by the 20,000× amplification computed above; its samples read as
#   one or two digits only because the classifier has to pick something. The linear schedule forgives the unclipped
#   sampler (its amplification is 157), which is why [chapter 06](06_sampling.py) could treat clipping as a small improvement.
#
# ## 5. From the command line
#
# ```bash
# python -m ddpm_lib train --preset quick --schedule cosine --sampler clip --out runs/cosine  # grids: clipped
# python -m ddpm_lib sample --checkpoint runs/cosine/checkpoints/last.pt --sampler clip --steps 100
# ```
#
# The schedule is stored in the checkpoint's config, so `sample` and `evaluate` rebuild it. With the cosine schedule,
# keep `--sampler clip`, the default of `sample` and `evaluate`: both warn when asked for an unclipped sampler, and
# `train` refuses a cosine run whose sample grids would be drawn without clipping (the quick preset's grids use
# unclipped DDPM, hence `--sampler clip` above).
#
# ## Summary
#
# - A schedule is fixed by its $\beta_t$ or, equivalently, by $\bar\alpha_t$: $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$.
#   The cosine schedule sets $\bar\alpha_t = f((t+1)/T)/f(0)$ with $f(u) = \cos^2(\frac{u+s}{1+s}\frac{\pi}{2})$,
#   an offset $s = 0.008$ and $\beta \le 0.999$.
# - Under the linear schedule the SNR falls through 1 a quarter of the way through the chain; the cosine schedule
#   keeps the digit until the middle and spreads the steps evenly in log-SNR.
# - Schedules share one interface (`NoiseSchedule`): `q_sample` and every sampler work with either, unchanged.
# - The first reverse step multiplies the network's error in $\hat\varepsilon$ by $1/\sqrt{\mathrm{SNR}_{T-1}}$ in $\hat x_0$: about
#   157 for the linear schedule, about 20,000 for the cosine one ($\bar\alpha_{T-1} = 2 \cdot 10^{-9}$). With the cosine schedule,
#   sample with clipping (`sample_clip()`, `--sampler clip`).
# - `CosineScheduler` matches `diffusers`' `squaredcos_cap_v2` table for table (`tests/test_schedule.py`);
#   `python -m ddpm_lib train --schedule cosine` trains with it.
#
# ## Exercises
#
# :::{exercise} 9.1 · ★☆☆ · $\bar\alpha$ by hand
# :nonumber:
#
# Write `cosine_alpha_bar(t, T, s=0.008)`: the cosine schedule's $\bar\alpha_t$ for an integer $t$ in $0..T-1$,
# straight from the formula of section 1 (no cap), as a Python float. Where does it differ from
# `CosineScheduler(T).alpha_bars[t]`, and why only there?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def cosine_alpha_bar(t: int, T: int, s: float = 0.008) -> float:
    ### BEGIN SOLUTION
    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return f((t + 1) / T) / f(0)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 9.1
for t in (0, 1, 250, 500, 998):
    assert math.isclose(cosine_alpha_bar(t, T), float(cosine.alpha_bars[t]), rel_tol=1e-4), t
assert cosine_alpha_bar(T - 1, T) < 1e-12 < float(cosine.alpha_bars[T - 1])  # the cap keeps it above zero
### BEGIN HIDDEN TESTS
assert math.isclose(cosine_alpha_bar(4, 10, s=0.0), math.cos(0.5 * math.pi / 2) ** 2, rel_tol=1e-12)
### END HIDDEN TESTS
print("Exercise 9.1 passed")

# %% [markdown]
# **Your answer (9.1, 1 point, graded by hand).** Where does your ᾱ differ from CosineScheduler's, and why only there?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# only at t = T-1. There the formula gives f(1)/f(0) = cos²(π/2)/f(0), zero up to rounding,
# and its β would be exactly 1. The class caps every β at 0.999, which bites at that one step only (every
# other β is far below the cap, section 1): its ᾱ_{T-1} is 0.001 · ᾱ_{T-2}, about 2·10⁻⁹ instead of 0.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: only at t = T − 1, where the formula gives 0 (β = 1); the class caps β at 0.999, which binds at that step alone, so its ᾱ_(T−1) is 0.001 · ᾱ_(T−2), about 2·10⁻⁹.
# - **½ point**: the right step without the reason (the cap), or the cap without the step.
# - **0**: attributes the difference to float precision everywhere.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 9.2 · ★★☆ · From $\bar\alpha$ back to $\beta$
# :nonumber:
#
# Write `betas_from_alpha_bars(alpha_bars)`: the $\beta_t$ of a float64 tensor of $\bar\alpha_t$
# ($\bar\alpha_{-1} = 1$). Check it on both schedules. Then build a `NoiseSchedule` from the betas of a schedule
# of your own: $\bar\alpha$ falling *linearly* from 1 to 0.001 — what does its SNR curve look like next to the
# two above?
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def betas_from_alpha_bars(alpha_bars: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    previous = torch.cat([torch.ones(1, dtype=alpha_bars.dtype), alpha_bars[:-1]])
    return 1 - alpha_bars / previous
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 9.2
for schedule in (linear, cosine):
    recovered = betas_from_alpha_bars(schedule.alpha_bars.double())
    assert torch.allclose(recovered, schedule.betas.double(), rtol=1e-3, atol=1e-6)
straight = NoiseSchedule(
    betas_from_alpha_bars(torch.linspace(1 - 1e-4, 1e-3, T, dtype=torch.float64)).float()
)
assert torch.allclose(
    straight.alpha_bars.double(), torch.linspace(1 - 1e-4, 1e-3, T, dtype=torch.float64), atol=1e-4
)
### BEGIN HIDDEN TESTS
assert torch.allclose(betas_from_alpha_bars(torch.tensor([0.5, 0.25], dtype=torch.float64)),
                      torch.tensor([0.5, 0.5], dtype=torch.float64))  # fmt: skip
### END HIDDEN TESTS
print("Exercise 9.2 passed")

# %% [markdown]
# **Your answer (9.2, 1 point, graded by hand).** What does the SNR curve of a linearly falling ᾱ look like next to the two schedules?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# with ᾱ falling linearly from 1 to 0.001, SNR = ᾱ/(1 − ᾱ) crosses 1 at the middle, like the
# cosine schedule, but its log-SNR is far from straight: it falls from 4 to 0 (log10) in the first half,
# only to about −1 by t = 900, and then plunges to −3 in the last few percent, where β_t = 1 − ᾱ_t/ᾱ_{t−1}
# grows to 0.5 at the last step. It spends most steps on easy, high-SNR images and rushes through the
# noisy end: the opposite mistake to the linear-β schedule, which lingers near pure noise.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: log-SNR crosses 0 at the middle like the cosine schedule but is far from straight: it falls slowly for most steps and plunges in the last few percent (β grows to 0.5), spending steps on easy high-SNR images, the opposite mistake to linear-β.
# - **½ point**: describes the shape without comparing it with the two schedules, or the comparison without the shape.
# - **0**: no description of the curve.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->


# %% [markdown]
# :::{exercise} 9.3 · ★★★ · Zero terminal SNR and v-prediction
# :nonumber:
#
# Even the cosine schedule ends at an SNR above zero, so the last training image still holds a trace of the
# digit while sampling starts from pure noise. {cite:t}`lin2024flawed` rescale $\sqrt{\bar\alpha}$ so that it ends
# at exactly 0 and keeps its first value:
# $\sqrt{\bar\alpha}' = (\sqrt{\bar\alpha} - \sqrt{\bar\alpha_{T-1}})\cdot\frac{\sqrt{\bar\alpha_0}}{\sqrt{\bar\alpha_0} - \sqrt{\bar\alpha_{T-1}}}$.
#
# 1. Write `zero_terminal_snr(schedule)` returning a `NoiseSchedule` whose $\bar\alpha$ is the rescaled one (its
#    last $\beta$ is then exactly 1).
# 2. With $\bar\alpha_{T-1} = 0$, what can an ε-predicting network *not* do at $t = T-1$? Lin et al. switch to
#    *v-prediction* {cite:p}`salimans2022progressive`: the network predicts
#    $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\,x_0$, and the clean image follows as
#    $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$. Write `v_target(schedule, t, x0, noise)`, the $v$
#    that training would ask for at timestep `t` (an int), and say why this target survives $\bar\alpha = 0$.
# :::


# %% tags=["hide-input"] mystnb={"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"} jupyter={"source_hidden": true}
def zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    ### BEGIN SOLUTION
    root = schedule.alpha_bars.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bars = root**2
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    betas = 1 - alpha_bars / previous
    return NoiseSchedule(betas.float(), betas)
    ### END SOLUTION


def v_target(schedule: NoiseSchedule, t: int, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    alpha_bar = schedule.alpha_bars[t].double()
    return (alpha_bar.sqrt() * noise.double() - (1 - alpha_bar).sqrt() * x0.double()).to(x0.dtype)
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 9.3
rescaled = zero_terminal_snr(linear)
assert rescaled.alpha_bars[-1] == 0 and math.isclose(rescaled.betas[-1].item(), 1.0)
assert math.isclose(rescaled.alpha_bars[0].item(), linear.alpha_bars[0].item(), rel_tol=1e-5)
assert (rescaled.alpha_bars[1:] < rescaled.alpha_bars[:-1]).all()
digits, noise = heldout[:4], torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(9))
assert torch.allclose(v_target(rescaled, T - 1, digits, noise), -digits, atol=1e-6)  # v = -x0 at zero SNR
for t in (0, 500, 998):  # x0 comes back from x_t and v at every t, with no division
    x_t = q_sample(rescaled, digits, torch.full((4,), t), noise)
    v = v_target(rescaled, t, digits, noise)
    recovered = rescaled.alpha_bars[t].sqrt() * x_t - (1 - rescaled.alpha_bars[t]).sqrt() * v
    assert torch.allclose(recovered, digits, atol=1e-4), t
### BEGIN HIDDEN TESTS
assert zero_terminal_snr(cosine).snr[-1] == 0
assert torch.allclose(v_target(linear, 0, digits, noise),
                      linear.alpha_bars[0].sqrt() * noise - (1 - linear.alpha_bars[0]).sqrt() * digits)  # fmt: skip
### END HIDDEN TESTS
print("Exercise 9.3 passed")

# %% [markdown]
# **Your answer (9.3, 1 point, graded by hand).** What can an ε-network not do at ᾱ = 0, and why does the v-target survive?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# **Part 2.** At ᾱ_{T-1} = 0 the training image is x_{T-1} = ε exactly: the ε-target equals the input,
# so the network learns the identity and its prediction says nothing about the digit. Worse, sampling turns
# it into x̂0 = (x_t − √(1 − ᾱ) ε̂)/√ᾱ, a division by zero: the first step, the one that must start deciding
# the digit, has no x̂0 at all. The v-target at ᾱ = 0 is v = −x0: the network must predict the clean image
# (in effect the average digit, given pure noise), a finite and informative target, and x̂0 = −v̂ needs no
# division. At every t, v mixes the two targets so that neither √ᾱ nor √(1 − ᾱ) is ever divided by.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: at ᾱ = 0 the ε-target is the input itself and x̂₀ = (x_t − √(1 − ᾱ) ε̂)/√ᾱ divides by zero; the v-target is −x₀, finite and informative, and x̂₀ = −v̂ needs no division.
# - **½ point**: one of the two failures of ε, with why v survives.
# - **0**: no reason why v survives.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
