"""Regression tests for the classic DDPM bugs of chapter 13 (chapters/13_common_bugs.py), against ddpm_lib alone.

Bugs whose tests already live elsewhere are not repeated here (the chapter's section 9 lists every test):
the (1 - sqrt(alpha_bar)) noise coefficient (tests/test_diffusion.py), the wrapped alpha_bar at t = 0
(tests/test_sampling.py, tests/test_schedule.py) and leading spacing (tests/test_fast_sampling.py). This file
holds the rest:

- 3: the reverse step's noise has std sqrt(posterior variance), not the variance;
- 4: every sampling loop runs the network in eval mode (BatchNorm), training runs it in train mode;
- 5: both MNIST sources give images spanning exactly [-1, 1];
- 6: the training loss draws t from all of 0..T-1;
- 7: the fast samplers start at t = T - 1 by default;
- 8: a respaced jump t -> s keeps the marginal q(x_s | x_0) (a perfect denoiser, no training).
"""

import copy
import math
import struct

import numpy as np
import pytest
import torch
from stand_ins import StandIn, oracle_for
from torch import nn

from ddpm_lib.data import load_mnist, to_model_range
from ddpm_lib.diffusion import q_sample
from ddpm_lib.fast_sampling import ddim_sample, ddim_step, dpm_solver_pp_sample, timesteps_for
from ddpm_lib.generation import generate
from ddpm_lib.sampling import reverse_step, sample, sample_clip, sample_loop
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import ddpm_loss, make_optimizer, train_step
from ddpm_lib.unet import Unet

T = 1000


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(T, 1e-4, 0.02)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Spy(nn.Module):
    """Predicts zeros; records the timesteps and the train/eval mode of every call."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # so an optimiser and a backward pass have something
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x, t):
        self.calls.append((t.clone(), self.training))
        return torch.zeros_like(x) + 0.0 * self.anchor


def alpha_bar(scheduler, t: int) -> float:
    return 1.0 if t < 0 else scheduler.alpha_bars[t].item()


def jump_variance(scheduler, t: int, s: int) -> float:
    """The posterior variance of a jump t -> s: (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)."""
    return (
        (1 - alpha_bar(scheduler, s))
        / (1 - alpha_bar(scheduler, t))
        * (1 - alpha_bar(scheduler, t) / alpha_bar(scheduler, s))
    )


#: a reverse step or jump t -> s, called as step(scheduler, t, s, model, x_t, generator); the one-step samplers
#: of chapter 06 only take s = t - 1
STEPS = {
    "sample": lambda scheduler, t, s, model, x, g: sample(scheduler, t, model, x, g),
    "sample_clip": lambda scheduler, t, s, model, x, g: sample_clip(scheduler, t, model, x, g),
    "reverse_step": lambda scheduler, t, s, model, x, g: reverse_step(scheduler, t, s, model, x, generator=g),
    "ddim_step(eta=1)": lambda scheduler, t, s, model, x, g: ddim_step(
        scheduler, t, s, model, x, eta=1.0, generator=g
    ),
}
ONE_STEP_PAIRS = [(1, 0), (10, 9), (500, 499), (999, 998)]
JUMP_PAIRS = [*ONE_STEP_PAIRS, (999, 899), (600, 450), (199, 99), (40, 3)]


def pairs_for(name: str) -> list[tuple[int, int]]:
    return ONE_STEP_PAIRS if name in ("sample", "sample_clip") else JUMP_PAIRS


# ---------------------------------------------------------------- bug 3: a variance used as a std


@pytest.mark.parametrize("name", STEPS)
def test_reverse_step_noise_std_is_the_posterior_std(scheduler, name):
    """Two seeds differ only by sigma (z_a - z_b): std(difference) / sqrt(2) must be sqrt(posterior variance),
    not the variance itself (and not beta_t on a jump)."""
    step, model = STEPS[name], StandIn()
    x_t = torch.randn((16, 1, 28, 28), generator=generator(0))
    for t, s in pairs_for(name):
        a = step(scheduler, t, s, model, x_t, generator(1))
        b = step(scheduler, t, s, model, x_t, generator(2))
        measured = (a - b).std().item() / math.sqrt(2)
        assert measured == pytest.approx(math.sqrt(jump_variance(scheduler, t, s)), rel=0.03), (t, s)


# ---------------------------------------------------------------- bug 8: single-step beta on a respaced chain


@pytest.mark.parametrize("name", STEPS)
def test_respaced_jumps_keep_the_marginal_of_q(scheduler, name):
    """With a perfect denoiser, a jump t -> s turns a draw of q(x_t | x_0) into one of q(x_s | x_0):
    x_s - sqrt(abar_s) x_0 has mean 0 and variance 1 - abar_s (and is 0 at the clean end, s = -1).
    Keeping the single-step beta_t on a jump leaves far too much noise."""
    step = STEPS[name]
    x0 = 0.8 * torch.rand((256, 1, 8, 8), generator=generator(3)) - 0.6  # not zero-mean, inside [-1, 1]
    oracle = oracle_for(scheduler, x0)
    if name in ("sample", "sample_clip"):
        pairs = [*ONE_STEP_PAIRS, (0, -1)]
    else:
        trailing = timesteps_for(T, 10).tolist()
        pairs = [*JUMP_PAIRS, *zip(trailing, [*trailing[1:], -1], strict=True)]
    for t, s in pairs:
        x_t = q_sample(scheduler, x0, t, torch.randn(x0.shape, generator=generator(t)))
        x_s = step(scheduler, t, s, oracle, x_t, generator(t + 1))
        if s < 0:
            torch.testing.assert_close(x_s, x0, rtol=0, atol=1e-4)
            continue
        residual = x_s - math.sqrt(alpha_bar(scheduler, s)) * x0
        expected = 1 - alpha_bar(scheduler, s)
        assert residual.var().item() == pytest.approx(expected, rel=0.05), (t, s)
        assert abs(residual.mean().item()) < 0.05 * math.sqrt(expected), (t, s)


# ---------------------------------------------------------------- bug 4: BatchNorm in the wrong mode

SHORT = LinearBetaScheduler(5, 1e-3, 0.3)
LOOPS = {
    "sample_loop ddpm": lambda net, x: sample_loop(net, SHORT, x, clip=False, generator=generator(0)),
    "sample_loop clip": lambda net, x: sample_loop(net, SHORT, x, generator=generator(0)),
    "ddim_sample": lambda net, x: ddim_sample(net, SHORT, x, [4, 2, 0], eta=0.5, generator=generator(0)),
    "sample_loop respaced": lambda net, x: sample_loop(
        net, SHORT, x, [4, 2, 0], clip=False, generator=generator(0)
    ),
    "dpm_solver_pp_sample": lambda net, x: dpm_solver_pp_sample(net, SHORT, x, [4, 2, 0]),
}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("start_in_train_mode", [True, False], ids=["from-train", "from-eval"])
def test_every_sampling_loop_runs_the_network_in_eval_mode(loop, start_in_train_mode):
    """A sampler must not trust its caller: BatchNorm in train mode makes one image's prediction depend on
    the rest of the batch. Every loop switches to eval mode and restores the mode it found."""
    spy = Spy().train(start_in_train_mode)
    LOOPS[loop](spy, torch.randn((2, 1, 4, 4), generator=generator(1)))
    assert spy.calls and not any(training for _, training in spy.calls)
    assert spy.training == start_in_train_mode


def test_sampling_a_batchnorm_unet_left_in_train_mode_is_batch_invariant(scheduler):
    torch.manual_seed(0)
    net = Unet(
        timesteps=T,
        time_embedding_dim=16,
        base_dim=8,
        dim_mults=[2],
        time_embedding="learned",
        norm="batch",
        unit="shuffle",
    )
    x = torch.randn((4, 1, 8, 8), generator=generator(2))
    t = torch.tensor([10, 300, 600, 900])
    with torch.no_grad():
        net(x, t)  # a train-mode pass moves BatchNorm's running statistics away from their defaults
        train_copy = copy.deepcopy(net)
        assert (train_copy(x, t)[:1] - train_copy(x[:1], t[:1])).abs().max() > 1e-3  # train mode: it depends
    net.train()
    three = timesteps_for(T, 3)
    together = ddim_sample(net, scheduler, x, three)  # eta = 0: no noise, so batches are comparable
    alone = ddim_sample(net, scheduler, x[:1], three)
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)
    assert net.training


def test_train_step_trains_in_train_mode(scheduler):
    """The reverse mistake: a model left in eval mode by a sampler must train in train mode."""
    spy = Spy().eval()
    x0 = torch.rand((8, 1, 4, 4), generator=generator(4)) * 2 - 1
    train_step(spy, make_optimizer(spy), None, scheduler, x0, generator(5))
    assert spy.calls and all(training for _, training in spy.calls)


# ---------------------------------------------------------------- bug 5: data in [0, 1]


def write_idx(path, array: np.ndarray, magic: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for size in array.shape:
            f.write(struct.pack(">I", size))
        f.write(array.astype(np.uint8).tobytes())


def test_both_mnist_sources_scale_to_minus_one_one(tmp_path):
    """Black (0) must become -1 and white (255) +1: data in [0, 1] also lie inside [-1, 1], so check the ends."""
    pixels = torch.zeros((1, 28, 28), dtype=torch.uint8)
    pixels[0, 10:18, 13:15] = 255
    assert to_model_range(pixels).unique().tolist() == [-1.0, 1.0]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 3), ("t10k", 2)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        images[:, 5:20, 12:16] = 255
        images[:, 20, 12:16] = 128
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count), 2049)
    for split in ("train", "heldout"):
        images = load_mnist(split, root=tmp_path, verbose=False).tensors[0]
        assert images.min() == -1 and images.max() == 1, split
        assert (images == -1).float().mean() > 0.5, split  # the background is -1, not 0
    subset = load_mnist("heldout", verbose=False).tensors[0]
    assert (subset == -1).float().mean() > 0.5


# ---------------------------------------------------------------- bug 6: t drawn from 1..T-1


def test_training_loss_draws_every_timestep_uniformly():
    """torch.randint(1, T) instead of (0, T) never trains t = 0, the step that returns the sample."""
    short = LinearBetaScheduler(10, 0.05, 0.5)
    spy = Spy()
    ddpm_loss(spy, short, torch.zeros((20_000, 1, 1, 1)), generator(6))
    counts = torch.bincount(spy.calls[0][0], minlength=10)
    assert len(counts) == 10  # nothing beyond T - 1
    assert ((counts - 2_000).abs() < 200).all(), counts.tolist()  # t = 0 included, about 2,000 of each
    spy = Spy()
    ddpm_loss(spy, LinearBetaScheduler(T), torch.zeros((200_000, 1, 1, 1)), generator(7))
    drawn = spy.calls[0][0]
    assert drawn.min() == 0 and drawn.max() == T - 1


# ---------------------------------------------------------------- bug 7: not starting at T - 1

FAST_LOOPS = {
    "ddim_sample on timesteps_for's default": lambda net, scheduler, x: ddim_sample(
        net, scheduler, x, timesteps_for(scheduler.num_timesteps, 10)
    ),
    "dpm_solver_pp_sample on timesteps_for's default": lambda net, scheduler, x: dpm_solver_pp_sample(
        net, scheduler, x, timesteps_for(scheduler.num_timesteps, 10)
    ),
    "generate ddpm, 10 steps": lambda net, scheduler, x: generate(
        net, scheduler, 1, image_shape=x.shape[1:], sampler="ddpm", steps=10
    ),
    "generate ddim": lambda net, scheduler, x: generate(
        net, scheduler, 1, image_shape=x.shape[1:], sampler="ddim", steps=10
    ),
}


@pytest.mark.parametrize("loop", FAST_LOOPS)
def test_fast_samplers_start_at_T_minus_1_by_default(scheduler, loop):
    """A chain from x_T ~ N(0, I) must first ask the network about t = T - 1 (leading spacing asks about 900)."""
    spy = Spy()
    FAST_LOOPS[loop](spy, scheduler, torch.randn((1, 1, 4, 4), generator=generator(8)))
    labels = [int(t[0]) for t, _ in spy.calls]
    assert len(labels) == 10 and labels[0] == T - 1, labels
