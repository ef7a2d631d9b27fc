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
# # 14 · Scaling out: one GPU, many GPUs, many machines
#
# Everything so far ran in one process. The reference implementation reaches for more GPUs with one
# line, `model = nn.DataParallel(model)`. This chapter replaces that line with PyTorch's
# `DistributedDataParallel` (DDP) {cite:p}`li2020pytorchddp`, launched by `torchrun`, and shows that the
# course's training command runs unchanged on a laptop, on every GPU of a workstation and across the nodes
# of a SLURM cluster. Symbols are those of the [notation](../notation.md) page.
#
# **After this chapter you can**
#
# - explain how `DataParallel` and `DistributedDataParallel` split the work, and why PyTorch recommends DDP;
# - show why averaging the gradients of N shards equals the gradient of the whole batch — and when it
#   does not (BatchNorm);
# - name what changes in a training loop that runs as N processes: start-up, data, randomness, files;
# - check on your own CPU that two processes reach the weights of one;
# - launch `python -m ddpm_lib train` on one GPU, on one node with several, and on a SLURM cluster, and resume it.
#
# Nothing here needs a GPU: two CPU processes talking through the `gloo` backend exercise the same code
# path as eight GPUs talking through `nccl`.

# %%
import importlib.util
import subprocess
import sys

# On Colab (or anywhere without the course installed): install its package, with the shipped weights.
if importlib.util.find_spec("ddpm_lib") is None:
    COURSE = "ddpm_lib @ git+https://github.com/diffusion-from-scratch/diffusion-from-scratch"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], check=True)

import inspect
import json
import math
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import ddpm_lib
from ddpm_lib import checkpoint
from ddpm_lib.config import build_model, preset_defaults
from ddpm_lib.data import load_mnist
from ddpm_lib.distributed import Distributed, shard
from ddpm_lib.plotting import save_figure
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.profile import PROFILE
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import batch_stream, ddpm_loss
from ddpm_lib.unet import Unet

torch.manual_seed(0)
scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
images = load_mnist("train").tensors[0]
print(f"profile: {PROFILE.name}; training digits: {len(images)}; "
      f"torch.distributed available: {torch.distributed.is_available()}")  # fmt: skip

# %% [markdown]
# ## 1. Two ways to use several GPUs
#
# **`nn.DataParallel`** (the reference's) is *one* Python process driving all GPUs from threads. Every
# step it (1) copies the model's weights from GPU 0 to every other GPU, (2) scatters the batch,
# (3) runs the forward passes in threads, (4) gathers the outputs on GPU 0, where the loss is computed,
# and (5) sums the gradients back onto GPU 0, where the optimiser runs. GPU 0 does more work and holds
# more memory than the others, the threads share one Python interpreter (the GIL), the weights travel
# every step, and it cannot leave the machine.
#
# **`DistributedDataParallel`** runs *one process per GPU*, each with its own copy of the model and its
# own optimiser. The copies start identical (DDP broadcasts rank 0's weights when it wraps the model).
# Each step, every process runs forward and backward on its share of the batch; during `backward()`,
# DDP averages the gradients across processes with an **all-reduce**, bucket by bucket, while the rest
# of the backward pass is still running. Afterwards every process holds the same averaged gradient,
# takes the same optimiser step, and the copies stay identical without weights ever being sent again.
#
# | | `DataParallel` | `DistributedDataParallel` |
# | --- | --- | --- |
# | processes | 1, one thread per GPU | 1 per GPU (`torchrun` starts them) |
# | sent per step | weights out, outputs in, gradients in | gradients only (all-reduce) |
# | balance | GPU 0 does the loss and the optimiser | every process is alike |
# | machines | one | any number (`--nnodes`) |
# | CPU-only | no | yes (`gloo` backend) — this chapter runs it |
#
# The processes are numbered by their **rank** $0,\dots,N-1$; $N$ is the **world size**. On each machine,
# the **local rank** picks the GPU (`cuda:LOCAL_RANK`). `torchrun` sets `RANK`, `WORLD_SIZE` and
# `LOCAL_RANK` in every process it starts; `ddpm_lib.distributed` reads them (and nothing else does), joins
# the process group with `nccl` on GPUs or `gloo` on CPUs, and wraps the model in DDP.
#
# ## 2. Why averaging gradients is one big batch
#
# The DDPM loss is a mean over the batch, $L = \frac1B\sum_{i=1}^B \ell_i$. Split the batch into $N$ equal
# shards $S_r$ of $B/N$ images and let $L_r$ be the mean over shard $r$. Then
#
# $$L = \frac1N \sum_{r=0}^{N-1} L_r \qquad\Longrightarrow\qquad \nabla L = \frac1N \sum_{r=0}^{N-1} \nabla L_r ,$$
#
# and the right-hand side is exactly what the all-reduce computes. Three conditions hide in that line:
#
# 1. **equal shards** — with unequal ones the plain mean of the $L_r$ weights images unequally;
# 2. **each $\ell_i$ depends on image $i$ only** — true with GroupNorm {cite:p}`wu2018groupnorm` (the course's
#    default), false with BatchNorm {cite:p}`ioffe2015batchnorm`, whose statistics mix the images of a batch: each process normalises with its own shard's
#    statistics (`nn.SyncBatchNorm` all-reduces them instead, at the cost of a collective per layer);
# 3. **the same random draws** — each image needs the timestep $t$ and noise $\varepsilon$ that one process
#    would have drawn for it.
#
# [Chapter 05](05_training.py)'s `ddpm_loss` meets the third condition the simplest way, through its `part` argument: every
# process draws $t$ and $\varepsilon$ for the *whole* global batch from the same seeded generator — the same
# calls, in the same order, as one process — and keeps its slice, `shard(batch_size, rank, world_size)`. The
# extra random numbers cost nothing next to the network.

# %%
print(inspect.getsource(shard))

# %% [markdown]
# Now the identity, in float64 on a batch of 8 digits: the gradient of the whole batch against the mean of
# the shard gradients, for 2 and 4 "processes" simulated in this one — with GroupNorm and with BatchNorm.


# %%
def flat_gradient(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


x0 = images[:8].double()
mismatch = {}
for norm in ("group", "batch"):
    torch.manual_seed(0)
    model = Unet(base_dim=8, dim_mults=[2], norm=norm).double()
    whole = flat_gradient(model, ddpm_loss(model, scheduler, x0, torch.Generator().manual_seed(1)))
    for world_size in (2, 4):
        per_rank = [
            flat_gradient(model, ddpm_loss(model, scheduler, x0, torch.Generator().manual_seed(1),
                                           part=shard(len(x0), rank, world_size)))
            for rank in range(world_size)
        ]  # fmt: skip
        averaged = torch.stack(per_rank).mean(dim=0)  # what DDP's all-reduce leaves in every process
        mismatch[norm, world_size] = ((averaged - whole).norm() / whole.norm()).item()
        print(f"{norm.capitalize():>5}Norm, {world_size} shards: |mean of shard gradients - batch gradient| / |batch gradient| "
              f"= {mismatch[norm, world_size]:.1e}")  # fmt: skip
assert all(mismatch["group", n] < 1e-6 for n in (2, 4))  # equal up to float rounding
assert all(mismatch["batch", n] > 1e-3 for n in (2, 4))  # per-shard statistics change the gradient

# %% [markdown]
# With GroupNorm the two agree to float rounding; with BatchNorm the shards see different batch
# statistics and the gradients differ by far more than rounding — one reason the course's U-Net uses
# GroupNorm ([chapter 04](04_unet.py) gives the others).
#
# ## 3. What changes in the training loop
#
# There is no second training loop: `ddpm_lib.runner` runs [chapter 05](05_training.py)'s `train` under torchrun too, and
# `ddpm_lib.distributed` supplies what differs through the loop's hooks (`Distributed.train_hooks`: the
# `part` of each batch, the `mean_loss`, and a `should_stop` every process agrees on). What changes:
#
# 1. **Start-up.** Read rank, local rank and world size; pick the device (`cuda:LOCAL_RANK`, or the CPU);
#    `init_process_group("nccl" | "gloo")`; build the model with the same seed in every process; wrap it:
#    `DistributedDataParallel(model, device_ids=[local_rank])`. The optimiser, the LR schedule and the EMA
#    keep using the unwrapped model.
# 2. **Data.** `--batch-size` stays the **global** batch (as with `DataParallel`), and it must split evenly.
#    Every process walks the same batch order — [chapter 05](05_training.py)'s `batch_stream`, reshuffled each epoch from
#    (seed, epoch) — and takes its slice of every batch. PyTorch's `DistributedSampler` splits each *epoch*
#    instead (you will rebuild it in exercise 14.1) and must be told the epoch with `set_epoch(e)`, or
#    every epoch repeats the same order; splitting each *batch* is what makes N processes reproduce one.
# 3. **Randomness.** Timesteps and noise for the whole global batch, sliced (section 2).
# 4. **One writer.** Rank 0 alone writes `config.json` and `run.json`, metrics, checkpoints (atomically, as in [chapter 05](05_training.py)),
#    sample grids and wandb logs, and shows the progress bar. The EMA lives on rank 0 too: the other
#    ranks' weights are identical, so their averages would be too.
# 5. **Agreeing to stop.** Every process stops after the same step, or the others would wait forever in
#    the next all-reduce. Before each step the ranks all-reduce a "stop requested" flag (Ctrl-C, or the
#    SIGTERM a cluster sends before a time limit); then rank 0 saves a checkpoint.
# 6. **Logged loss.** Each process's loss covers its shard; the metrics hold their mean over all
#    processes, which is the loss of the global batch.
#
# The hooks, as `ddpm_lib.distributed` writes them:

# %%
print(inspect.getsource(Distributed.train_hooks))

# %% [markdown]
# Here is the data part on the first batch of epochs 0 and 1 (batch 8, two processes): both processes
# compute the same global batch and keep different halves of it.

# %%
positions = torch.arange(len(images))  # batch_stream of the positions shows which digits a batch holds
steps_per_epoch = len(images) // 8
for step, batch in batch_stream(positions, batch_size=8, seed=0, start_step=0):
    if step not in (0, steps_per_epoch):
        if step > steps_per_epoch:
            break
        continue
    halves = [batch[shard(8, rank, 2)].tolist() for rank in range(2)]
    print(f"step {step:3d} (epoch {step // steps_per_epoch}): global batch {batch.tolist()}")
    print(f"          rank 0 trains on {halves[0]}, rank 1 on {halves[1]}")
    assert halves[0] + halves[1] == batch.tolist()

# %% [markdown]
# ## 4. Two processes on this CPU
#
# The real thing: `torchrun --standalone --nproc_per_node 2` starts two processes that meet on a free local
# port and train through `gloo`, next to a plain one-process run with the same global batch and seed. Both
# train a tiny U-Net for a few steps (the profile decides how many) and run at the same time on this machine.

# %%
workdir = Path(tempfile.mkdtemp(prefix="ddpm-ch14-"))
tiny = ["--steps", str(PROFILE.scaling_steps), "--batch-size", "16", "--base-dim", "8", "--dim-mults", "2",
        "--n-samples", "1", "--eval-every", "0", "--checkpoint-every", "4", "--device", "cpu", "--no-progress"]  # fmt: skip
torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
launchers = {
    "one": [sys.executable, "-m", "ddpm_lib", "train"],
    "two": [*torchrun, "-m", "ddpm_lib", "train"],
}
running = {
    name: subprocess.Popen(
        [*launcher, *tiny, "--out", str(workdir / name)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for name, launcher in launchers.items()
}
for name, process in running.items():
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    shown = shlex.join(["python" if word == sys.executable else word for word in launchers[name]])
    print(f"$ {shown} {' '.join(tiny)} --out {name}\n  {stdout.strip().splitlines()[-1]}")

# %%
two = workdir / "two"
print("run folder of the two-process run:")
for path in sorted(p for p in two.rglob("*") if p.is_file()):
    print("   ", path.relative_to(two).as_posix())
config = json.loads((two / "config.json").read_text())  # what was asked for
record = json.loads((two / "run.json").read_text())  # what the run decided
for key in ("batch_size", "lr", "lr_scaling"):
    print(f"{key:>24}: {config[key]}  (config.json)")
for key in ("world_size", "backend", "per_process_batch_size", "effective_lr", "device", "precision"):
    print(f"{key:>24}: {record[key]}  (run.json)")
assert (record["world_size"], record["per_process_batch_size"], record["backend"]) == (2, 8, "gloo")

# %% [markdown]
# One run folder, one `metrics.jsonl`, one set of checkpoints: rank 1 trained but wrote nothing.
# `config.json` says what was asked for; `run.json` states how the batch was split and which learning rate was used
# (`--lr-scaling` below).
# Now the comparison: the loss of every step, and the weights.

# %%
metrics = {
    name: [json.loads(line) for line in (workdir / name / "metrics.jsonl").read_text().splitlines()]
    for name in running
}
losses = {name: torch.tensor([r["loss"] for r in records]) for name, records in metrics.items()}
loss_gap = ((losses["two"] - losses["one"]).abs() / losses["one"]).max().item()

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(range(1, len(losses["one"]) + 1), losses["one"], "o-", label="1 process, batch 16")
ax.plot(range(1, len(losses["two"]) + 1), losses["two"], "x--", label="2 processes × 8 (gloo)")
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.set_title("the same run on one and two processes")
ax.legend()
fig.tight_layout()
save_figure(fig, "14_ddp_losses")
plt.show()
print(f"largest relative difference of the per-step losses: {loss_gap:.1e}")
assert len(losses["one"]) == len(losses["two"]) == PROFILE.scaling_steps and loss_gap < 1e-5

# %% [markdown]
# The curves lie on top of each other. The weights need one more idea. Comparing every parameter, a few
# differ by $10^{-4}$ or more — the size of an Adam step, far more than rounding:

# %%
states = {name: checkpoint.load(workdir / name / "checkpoints" / "last.pt", "run") for name in running}
gaps = {
    k: (states["one"]["model"][k] - states["two"]["model"][k]).abs().max().item()
    for k in states["one"]["model"]
}
for name, gap in sorted(gaps.items(), key=lambda item: -item[1])[:4]:
    print(f"{gap:.1e}  {name}")

# %% [markdown]
# All four are convolution biases followed by a GroupNorm group of *one* channel. Normalising a channel
# removes any constant added to it, so these biases change nothing the network computes and their true
# gradient is exactly zero. What backward returns is rounding noise of order $10^{-10}$ — and Adam
# {cite:p}`kingma2015adam` divides the gradient by its own running size, so noise turns into steps of about the learning rate, in a
# direction that depends on how each run rounded. Find them by their zero gradient, leave them out, and
# compare the rest and, better, what the networks compute:

# %%
probe = Unet(**states["one"]["config"]["model"]).double()
probe(
    torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 10, 500, 999])
).square().mean().backward()
inert = {name for name, p in probe.named_parameters() if p.grad.abs().max() < 1e-12}
weight_gap = max(gap for name, gap in gaps.items() if name not in inert)

x_probe = images[:8]
t_probe = torch.arange(0, 1000, 125)
outputs = {}
for name, state in states.items():
    model = Unet(**state["config"]["model"])
    model.load_state_dict(state["ema"]["model"])
    with torch.no_grad():
        outputs[name] = model.eval()(x_probe, t_probe)
output_gap = (outputs["one"] - outputs["two"]).abs().max().item()
print(f"parameters with a zero gradient: {len(inert)} biases ({', '.join(sorted(inert)[:2])}, ...)")
print(f"largest difference of every other parameter: {weight_gap:.1e}")
print(f"largest difference of the EMA models' outputs on 8 digits: {output_gap:.1e}")
assert all(name.endswith(".bias") for name in inert)
assert weight_gap < 1e-5 and output_gap < 1e-4

# %% [markdown]
# Two processes reach the model of one, within float rounding. The test suite checks the same, and also
# that a two-process run killed mid-way resumes to the same weights (`tests/test_ddp.py`).
#
# ## 5. The commands
#
# The training command does not change; only the launcher in front of it does.
#
# **One GPU** (no launcher needed; `--device auto` takes the GPU, and `--precision auto` computes the forward pass
# in bfloat16 on GPUs of compute capability 8.0+ — A100, H100, RTX 30xx and newer — and in float16 with a gradient
# scaler on older ones such as Colab's T4):
#
# ```bash
# python -m ddpm_lib train --out runs/gpu --precision auto
# ```
#
# **One machine, all its GPUs** (`--nproc_per_node gpu` starts one process per visible GPU;
# `--standalone` finds a free port on this machine):
#
# ```bash
# torchrun --standalone --nproc_per_node gpu -m ddpm_lib train --out runs/ddp --batch-size 1024 --lr-scaling sqrt \
#     --precision auto
# ```
#
# **Several machines**: the same line on every node, meeting at one of them:
#
# ```bash
# torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint node01:29500 --rdzv-id ddpm42 \
#     -m ddpm_lib train --out /shared/runs/ddp --batch-size 2048 --lr-scaling sqrt --precision auto
# ```
#
# **A SLURM cluster**: `srun` starts one `torchrun` per node; the repository ships this batch script:

# %%
sbatch = Path(ddpm_lib.__file__).resolve().parents[1] / "examples" / "slurm" / "train_ddp.sbatch"
print(
    sbatch.read_text() if sbatch.exists() else "(examples/slurm/train_ddp.sbatch is in the course repository)"
)

# %% [markdown]
# A few rules that hold for all of these:
#
# - **Batch size and learning rate.** `--batch-size` is the global batch. Keep it, and more GPUs give
#   the same training, only faster (until each GPU's share gets too small to keep it busy). Raise it to
#   feed more GPUs, and the peak learning rate usually has to rise too: `--lr-scaling linear` multiplies
#   `--lr` by batch/128 ({cite:t}`goyal2017accurate`, for SGD), `--lr-scaling sqrt` by its square root, the milder
#   rule often used with Adam. Both are starting points to check against the loss curve, not laws.
#   `run.json` records `world_size`, `per_process_batch_size` and `effective_lr` (`config.json`, `lr_scaling`).
# - **Resume** with the same launcher line plus `--resume`. The run keeps its own config, and it needs the
#   world size it started with; another number of processes is refused with a one-line error.
# - **Stopping.** Ctrl-C, or the SIGTERM of a cluster's time limit, reaches every process through
#   `torchrun`; all stop after the same step and rank 0 saves a checkpoint.
# - **Data.** Every process loads the digits itself. Download full MNIST once before launching
#   (`python -m ddpm_lib data --root data --download`); compute nodes then need no network.
#
# ## 6. What to expect from the speed
#
# Each step, the all-reduce moves the gradient: one number per parameter. How much that is, for the U-Net
# `python -m ddpm_lib train` builds by default, for the one of the `quick` preset and for the two shipped MNIST
# denoisers, and what a ring all-reduce (exercise 14.3) sends per GPU for it:

# %%
sizes = {
    "default (python -m ddpm_lib train)": build_model(preset_defaults(None)),
    "quick preset (python -m ddpm_lib train --preset quick)": build_model(preset_defaults("quick")),
    "shipped ddpm_mnist_cond": load_pretrained("ddpm_mnist_cond")[0],
    "shipped ddpm_mnist": load_pretrained("ddpm_mnist")[0],
}
links = {"NVLink, ~300 GB/s": 300e9, "PCIe 4.0 x16, ~25 GB/s": 25e9, "10 Gb Ethernet, ~1.25 GB/s": 1.25e9}
gradient_bytes = {}
for name, net in sizes.items():
    parameters = sum(p.numel() for p in net.parameters())
    gradient_bytes[name] = 4 * parameters  # float32 gradients, whatever the forward pass's precision
    sent = 2 * (8 - 1) / 8 * gradient_bytes[name]  # ring all-reduce, 8 GPUs
    times = ", ".join(f"{1e3 * sent / rate:.2f} ms over {link}" for link, rate in links.items())
    print(f"{name}: {parameters:,} parameters, a {gradient_bytes[name] / 1e6:.1f} MB gradient")
    print(f"    ring all-reduce over 8 GPUs sends {sent / 1e6:.1f} MB per GPU per step: {times}")
assert 400_000 < sum(p.numel() for p in sizes["default (python -m ddpm_lib train)"].parameters()) < 450_000

# %% [markdown]
# So a step's all-reduce costs microseconds between GPUs on one NVLink board and a few milliseconds between
# machines on ordinary Ethernet — next to a forward and backward pass of a batch, little either way, and DDP
# hides most of it behind the backward pass. What limits data parallelism for a network this small is the
# batch: each GPU needs enough images to keep busy, so grow the global batch with the number of GPUs (and the
# learning rate with it, section 5).
#
# On a CPU the question is different. `python benchmarks/ddp_scaling.py` times the command line on 1 and 2
# processes with the same global batch and prints the command behind each figure. Two processes get no more
# cores than one process with two threads: they only trade intra-op threading (every convolution split across
# threads) for data parallelism (the batch split across processes, plus one all-reduce of the gradients per
# step). A run of the benchmark takes about ten minutes. So the course ships the record of one, made on the
# 2-core machine the course is tested on (course default U-Net, global batch 128, float32, the median of three
# rounds), and the cell below prints it, with the command behind every figure:

# %%
from importlib.resources import files  # noqa: E402

scaling = json.loads((files("ddpm_lib") / "results" / "ddp_scaling.json").read_text())
print(f"{scaling['command']}\n  torch {scaling['torch']}, {scaling['cpu_cores']} CPU cores ({scaling['machine']}), "
      f"{scaling['date']}; global batch {scaling['global_batch']}, base_dim {scaling['base_dim']}, "
      f"{scaling['timed_steps']} timed steps per run, median of {scaling['rounds']} rounds\n")  # fmt: skip
print(f"{'configuration':<34} {'threads':>7} {'images/s':>9} {'vs the first':>13}")
for row in scaling["rows"]:
    print(f"{row['name']:<34} {row['threads']:7d} {row['images_per_s']:9.1f} {row['ratio']:12.2f}x")
for row in scaling["rows"]:
    print(f"  {row['command']}")
scaling_rows = {row["name"]: row for row in scaling["rows"]}
one_thread = scaling_rows["1 process, no launcher, 1 thread"]["images_per_s"]
for name in ("1 process, no launcher", "2 processes, torchrun (gloo)"):
    print(f"{name}: {scaling_rows[name]['images_per_s'] / one_thread:.2f}x one process on one thread")
assert scaling["base_dim"] == 32 and scaling["global_batch"] == 128  # the course default, as the text says
assert 0.8 < scaling_rows["2 processes, torchrun (gloo)"]["ratio"] < 1.25  # no large gain, no large loss

# %% [markdown]
# Read it against the one-thread row. Two threads in one process train 1.74× as fast as one thread, and two
# processes of one thread each 1.77×: on two cores, splitting the batch across processes scales as well as
# splitting every convolution across threads, and no better — the 2% between them is less than the spread of
# the rounds. `torchrun` with a single process is about 9% slower than no launcher: DDP's bookkeeping, and a
# gloo all-reduce with no one to talk to. So expect no large gain and no large loss: two processes on one CPU
# exercise the same code as eight GPUs, which is what this chapter needs them for. Data parallelism pays when
# each process brings its own device.
#
# ## Summary
#
# - `DataParallel` is one process and threads, with GPU 0 as a hub; `DistributedDataParallel` is one
#   process per device that all-reduces gradients during backward, and works across machines and on CPUs.
# - Averaging the gradients of N equal shards is the gradient of the whole batch — if each image's loss
#   depends on that image only (GroupNorm, not BatchNorm) and each image gets the random draws one
#   process would give it.
# - In the loop: start-up and wrapping, each rank's slice of the same global batch, randomness drawn for
#   the whole batch, one writer (rank 0), and stopping together.
# - `torchrun … -m ddpm_lib train` trains the model one process trains, within float rounding; compare
#   runs by what the networks compute, since Adam turns the rounding noise of gradient-free parameters
#   into visible differences.
#
# ## Exercises
#
# Each exercise has a cell for your solution and, right after it, a cell that checks it (its first line is
# `# Check`). The solution between the two marker comments is ours: try the exercise before you read it.
# In the student copies an instructor hands out, it is replaced by `raise NotImplementedError()`, and the
# check fails until you write your own.
#
# :::{exercise} 14.1 · ★☆☆ · DistributedSampler by hand
# :nonumber:
#
# PyTorch's `DistributedSampler` (with `shuffle=True`, `drop_last=False`) draws a permutation of the $n$
# positions with a generator seeded by `seed + epoch`, pads it to a multiple of the world size by repeating
# it from the start, and gives rank $r$ every `world_size`-th position starting at $r$. Write
# `distributed_sampler_indices(n, rank, world_size, seed, epoch)` returning that list of ints.
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def distributed_sampler_indices(n: int, rank: int, world_size: int, seed: int, epoch: int) -> list[int]:
    ### BEGIN SOLUTION
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = math.ceil(n / world_size) * world_size
    order += (order * math.ceil(total / n))[: total - n]
    return order[rank:total:world_size]
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 14.1
from torch.utils.data import DistributedSampler

for n, world_size, rank, epoch in [(10, 2, 0, 0), (10, 2, 1, 0), (10, 4, 3, 1), (7, 3, 2, 5)]:
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=7)
    sampler.set_epoch(epoch)
    assert distributed_sampler_indices(n, rank, world_size, 7, epoch) == list(sampler), (n, world_size, rank)
shares = [distributed_sampler_indices(10, r, 4, 7, 0) for r in range(4)]
assert set(sum(shares, [])) == set(range(10)) and len(sum(shares, [])) == 12  # all positions, two repeated
### BEGIN HIDDEN TESTS
sampler = DistributedSampler(range(3), num_replicas=8, rank=6, shuffle=True, seed=0)
sampler.set_epoch(2)
assert distributed_sampler_indices(3, 6, 8, 0, 2) == list(sampler)
assert (
    distributed_sampler_indices(5, 0, 1, 1, 0)
    == torch.randperm(5, generator=torch.Generator().manual_seed(1)).tolist()
)
### END HIDDEN TESTS
print("Exercise 14.1 passed")

# %% [markdown]
# :::{exercise} 14.2 · ★★☆ · What SyncBatchNorm all-reduces
# :nonumber:
#
# With BatchNorm, each process could normalise with the statistics of the *global* batch if the processes
# shared three numbers per channel: their count of values, the sum and the sum of squares. Write
# `sync_batch_stats(shards)` that takes one (B_r, C, H, W) tensor per process — shards may differ in size —
# and returns the per-channel mean and biased variance of all of them together, computed only from those
# per-shard counts and sums (as an all-reduce would add them up), never by concatenating the shards.
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def sync_batch_stats(shards: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    ### BEGIN SOLUTION
    count = sum(s.numel() // s.shape[1] for s in shards)
    total = sum(s.sum(dim=(0, 2, 3)) for s in shards)
    squares = sum(s.square().sum(dim=(0, 2, 3)) for s in shards)
    mean = total / count
    return mean, squares / count - mean.square()
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 14.2
shards = [torch.randn(b, 3, 5, 5, dtype=torch.float64) * 2 + 1 for b in (4, 2, 7)]
mean, var = sync_batch_stats(shards)
together = torch.cat(shards)
assert mean.shape == var.shape == (3,)
assert torch.allclose(mean, together.mean(dim=(0, 2, 3)), atol=1e-12)
assert torch.allclose(var, together.var(dim=(0, 2, 3), unbiased=False), atol=1e-10)
### BEGIN HIDDEN TESTS
one_shard = [torch.randn(6, 2, 3, 3, dtype=torch.float64)]
assert torch.allclose(sync_batch_stats(one_shard)[1], one_shard[0].var(dim=(0, 2, 3), unbiased=False))
### END HIDDEN TESTS
print("Exercise 14.2 passed")

# %% [markdown]
# :::{exercise} 14.3 · ★★★ · The ring all-reduce
# :nonumber:
#
# NCCL and gloo sum gradients around a ring {cite:p}`patarasuk2009bandwidth`: each of the $N$ processes cuts its
# tensor into $N$ chunks and only ever sends one chunk to its right neighbour $(r + 1) \bmod N$. In $N-1$ **reduce-scatter** steps,
# rank $r$ sends chunk $(r - s) \bmod N$ at step $s$, and the neighbour adds it to its own copy of that chunk;
# afterwards rank $r$ holds the full sum of chunk $(r + 1) \bmod N$. In $N-1$ **all-gather** steps, rank $r$
# sends chunk $(r + 1 - s) \bmod N$ and the neighbour overwrites its copy. Write
# `ring_all_reduce(tensors)` for N equal-length 1-D tensors (length divisible by N) that simulates this
# with the messages of each step computed before any is delivered, and returns every rank's final tensor
# and the number of chunks each rank sent. Why is the amount each rank sends, $2\frac{N-1}{N}$ times the
# tensor, nearly independent of $N$ — and why does that make DDP scale?
# :::


# %% jupyter={"source_hidden": true} mystnb={"code_prompt_hide": "Hide solution", "code_prompt_show": "Show solution"} tags=["hide-input"]
def ring_all_reduce(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    ### BEGIN SOLUTION
    n = len(tensors)
    chunks = [list(t.clone().chunk(n)) for t in tensors]  # chunks[rank][chunk]
    sent = 0
    for step in range(n - 1):  # reduce-scatter
        messages = [(r, (r - step) % n, chunks[r][(r - step) % n].clone()) for r in range(n)]
        for r, c, data in messages:
            chunks[(r + 1) % n][c] = chunks[(r + 1) % n][c] + data
        sent += 1
    for step in range(n - 1):  # all-gather
        messages = [(r, (r + 1 - step) % n, chunks[r][(r + 1 - step) % n].clone()) for r in range(n)]
        for r, c, data in messages:
            chunks[(r + 1) % n][c] = data
        sent += 1
    return [torch.cat(c) for c in chunks], sent
    ### END SOLUTION


# %% jupyter={"source_hidden": true}
# Check 14.3
grads = [torch.randn(12, dtype=torch.float64) for _ in range(4)]
reduced, chunks_sent = ring_all_reduce(grads)
assert len(reduced) == 4 and all(torch.allclose(r, sum(grads), atol=1e-12) for r in reduced)
assert chunks_sent == 2 * (4 - 1)
print(f"each rank sent {chunks_sent} chunks of {12 // 4} values: {chunks_sent * 3 / 12:.2f}x its tensor")
### BEGIN HIDDEN TESTS
grads = [torch.arange(10.0) * (r + 1) for r in range(5)]
reduced, chunks_sent = ring_all_reduce(grads)
assert all(torch.equal(r, torch.arange(10.0) * 15) for r in reduced) and chunks_sent == 8
assert ring_all_reduce([torch.ones(2), torch.ones(2)])[1] == 2
### END HIDDEN TESTS
print("Exercise 14.3 passed")

# %% [markdown]
# **Your answer (14.3, 1 point, graded by hand).** Why is the amount each rank sends nearly independent of N, and why does that make DDP scale?
#
# <!-- ### BEGIN SOLUTION -->
# :::{admonition} Model answer
# :class: dropdown
#
# each rank sends one chunk of size S/N in each of the N − 1 reduce-scatter steps and each of
# the N − 1 all-gather steps: 2 (N − 1)/N · S, which grows from S (N = 2) towards 2S and never beyond. All N
# links carry their chunk at the same time, so the time of a bandwidth-bound all-reduce stays about 2S over
# one link's bandwidth however many GPUs join. A hub that collects and redistributes (DataParallel's GPU 0,
# a parameter server) receives and sends N · S: its time grows with N. The ring's cost that does grow is
# latency, 2 (N − 1) message steps, which is why NCCL switches to trees across many nodes; and DDP starts
# all-reducing gradient buckets during the backward pass, so much of the transfer is hidden.
# :::
#
# <!-- ### BEGIN RUBRIC -->
# :::{admonition} Rubric (1 point)
# :class: dropdown
#
# - **1 point**: one chunk S/N in each of the 2(N − 1) steps: 2(N − 1)/N · S, between S and 2S; all links work at once, so a bandwidth-bound all-reduce takes about the same time for any N, unlike a hub that moves N · S; latency still grows with N, and DDP overlaps the transfer with the backward pass.
# - **½ point**: the count right without why it makes DDP scale, or the reverse.
# - **0**: no count.
# :::
# <!-- ### END RUBRIC -->
# <!-- ### END SOLUTION -->
