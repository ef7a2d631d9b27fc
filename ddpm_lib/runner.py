"""Training runs from the command line (hand-written plumbing around ``ddpm_lib.training``).

``python -m ddpm_lib train`` writes a run folder::

    <out>/config.json           the resolved configuration (every option, after defaults)
    <out>/metrics.jsonl         one JSON object per step: step, loss, lr, grad_norm, images_per_s
    <out>/loss_curve.png        the loss curve, redrawn at every evaluation and at the end
    <out>/samples/step_NNNNNN.png   a grid of EMA samples per evaluation interval
    <out>/checkpoints/last.pt   the latest checkpoint (atomic); step_NNNNNN.pt kept at each evaluation

Checkpoints hold model, EMA, optimiser, LR scheduler, step, RNG states and config, and load with
``weights_only=True``. ``--resume`` continues from ``last.pt`` and reaches the same weights as an
uninterrupted run (bit for bit on a CPU). Ctrl-C or SIGTERM stops after the current step and saves a
checkpoint first; a non-finite loss stops the run and keeps the last good checkpoint.

**Continuing trained weights.** ``--init-from SOURCE`` (a shipped name such as ``ddpm_mnist``, or a ``run`` or
``denoiser`` checkpoint) starts a new run from SOURCE's EMA weights instead of random ones, for a network,
noise schedule and data set equal to SOURCE's (anything else is refused, naming the option). The step count
goes on from SOURCE's step, so ``--steps`` is the total over both runs (``--init-from`` a 24,000-step model
with ``--steps 36000`` trains 12,000 more); the optimiser is fresh, and the LR schedule is a new one-cycle over
the steps this run adds. ``<out>/init.json`` records the source: its path, SHA-256, step and, for shipped weights,
their training command.

**Several processes.** Started by ``torchrun`` (one node or many, or ``srun torchrun`` under SLURM), the
same command trains with ``DistributedDataParallel`` (:mod:`ddpm_lib.distributed`): one process per
GPU (``nccl``) or per CPU process (``gloo``), chosen automatically. ``--batch-size`` stays the *global*
batch, split evenly across the processes, and every process draws the noise of the whole batch and keeps
its slice, so N processes reach the weights one process reaches (within float rounding). Rank 0 alone
writes the run folder, checkpoints, metrics, sample grids and wandb, and shows the progress bar; the
other ranks write nothing. ``config.json`` records ``world_size``, ``per_process_batch_size``,
``backend`` and ``effective_lr`` (``--lr`` scaled by ``--lr-scaling``: ``none``, ``linear`` or ``sqrt``
in batch/128, the reference's batch). ``--resume`` needs the world size the run started with and says
so otherwise. Ctrl-C / SIGTERM (torchrun forwards them) stops every rank before the same step.
``--bf16`` (bfloat16 autocast) works on CPUs and on GPUs that support it (compute capability 8.0+). It is
faster only where the hardware computes in bfloat16 (``ddpm_lib.precision.native_bf16``): on a CPU without bfloat16
instructions PyTorch falls back to generic kernels, about ten times slower than float32 for the course's
U-Net (``benchmarks/sampling_speed.py`` and ``benchmarks/unet_throughput.py`` measure it), so there a new run
asked for bfloat16 (by ``--bf16`` or a preset) trains in float32 instead, says so, and records ``bf16: false``
in its config. A resumed run keeps the precision it started with, so that it reaches the same weights.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import checkpoint
from .config import TrainConfig, build_model, config_from_dict, scaled_lr, schedule_for
from .data import load_dataset
from .distributed import Distributed, shard
from .errors import UsageError
from .precision import NO_NATIVE_BF16, native_bf16  # noqa: F401 (NO_NATIVE_BF16: the CLI's notes)
from .training import EMA, make_lr_scheduler, make_optimizer, train


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def resolve_precision(
    config: TrainConfig, device: torch.device, resume: bool, announce: bool = True
) -> TrainConfig:
    """Train a new run in float32 where bfloat16 was asked for but ``device`` is a CPU without it (see the module
    docstring); a resumed run keeps its precision. ``announce``: say so on stderr."""
    if not config.bf16 or device.type != "cpu" or native_bf16(device):
        return config
    if resume:
        if announce:
            print(f"note: {NO_NATIVE_BF16}; the run resumes in bfloat16, as it started", file=sys.stderr)
        return config
    if announce:
        print(f"note: {NO_NATIVE_BF16}; training in float32 instead", file=sys.stderr)
    config.bf16 = False
    return config


def resolve_parallelism(config: TrainConfig, dist: Distributed, device: torch.device) -> TrainConfig:
    """Check that the run fits this launch and record its world size, batch split, backend and LR."""
    shard(config.batch_size, dist.rank, dist.world_size)  # the global batch must split evenly
    if config.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(
            "--bf16: this GPU has no bfloat16 support (it needs compute capability 8.0+); train without --bf16"
        )
    config.world_size = dist.world_size
    config.per_process_batch_size = config.batch_size // dist.world_size
    config.backend = Distributed.backend_for(device) if dist.launched else None
    config.effective_lr = scaled_lr(config.lr, config.batch_size, config.lr_scaling)
    return config


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (never mid-update)."""

    def __init__(self, escalate: bool = True):
        self.signal_name: str | None = None
        self.escalate = escalate  # False under torchrun: it forwards the Ctrl-C each worker already got
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and self.escalate:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.signal_name is not None


class Run:
    """Everything one training run holds; ``checkpoint()`` and ``resume()`` save and restore it."""

    def __init__(
        self, config: TrainConfig, out: Path, device: torch.device | None = None, first_step: int = 0
    ):
        self.config, self.out = config, Path(out)
        self.device = resolve_device(config.device) if device is None else device
        torch.manual_seed(config.seed)
        self.scheduler = schedule_for(config)
        self.model = build_model(config).to(self.device)
        # record every option of the U-Net, not only the ones given, so later defaults can't change it
        config.model = dict(self.model.config)
        self.ema = EMA(self.model, decay=config.ema_decay)
        peak_lr = config.lr if config.effective_lr is None else config.effective_lr
        self.optimizer = make_optimizer(self.model, peak_lr, config.weight_decay)
        # a run continued from trained weights (--init-from) anneals over the steps it adds
        self.lr_scheduler = make_lr_scheduler(
            self.optimizer, peak_lr, config.steps - first_step, config.pct_start
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = first_step

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state(self) -> dict:
        """The content of a ``run`` checkpoint (see :mod:`ddpm_lib.checkpoint`)."""
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
        }

    def checkpoint(self, keep: bool = False) -> Path:
        state = self.state()
        path = checkpoint.save(self.last_checkpoint, "run", **state)
        if keep:
            checkpoint.save(self.out / "checkpoints" / f"step_{self.step:06d}.pt", "run", **state)
        return path

    def resume(self, state: dict, path: Path) -> None:
        checkpoint.load_state(self.model, state["model"], path)
        checkpoint.load_state(self.ema.model, state["ema"]["model"], path, "EMA")
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["rng"]["generator"].to("cpu"))
        torch.set_rng_state(state["rng"]["torch"].to("cpu"))
        self.step = int(state["step"])

    def start_from(self, source: dict, path: Path) -> None:
        """Start from the EMA weights of ``source`` (a ``run`` or ``denoiser`` checkpoint), at its step."""
        checkpoint.load_state(self.model, source["ema"]["model"], path)
        checkpoint.load_state(self.ema.model, source["ema"]["model"], path, "EMA")
        self.ema.num_updates = int(source["ema"]["num_updates"])  # the warm-up of the average is over
        self.step = int(source["step"])


#: the options a run continued from trained weights must share with them: the network and what it learnt
INIT_MUST_MATCH = ("num_timesteps", "schedule", "beta_start", "beta_end", "dataset", "data_root")


def init_source(name_or_path: str | Path) -> tuple[Path, dict]:
    """The checkpoint ``--init-from`` names (a shipped name, or a path) and its content (read weights-only)."""
    from .pretrained import WEIGHTS, pretrained_path

    path = Path(name_or_path)
    if not path.exists() and (WEIGHTS / f"{name_or_path}.pt").is_file():
        path = pretrained_path(str(name_or_path))
    if not path.is_file():
        raise UsageError(
            f"{name_or_path} is neither a checkpoint file nor the name of shipped weights", "init_from"
        )
    return path, checkpoint.load(path, ("run", "denoiser"))


def check_init(config: TrainConfig, source: dict, path: Path) -> None:
    """Refuse to continue ``source`` with a different network, schedule or data set, or with no steps left."""
    theirs = config_from_dict(source["config"], f"{path}: its config")
    mine_model = dict(build_model(config).config)
    differences = [
        f"{key} {mine_model.get(key)!r} (the weights have {value!r})"
        for key, value in dict(build_model(theirs).config).items()
        if mine_model.get(key) != value
    ]
    differences += [
        f"{key} {getattr(config, key)!r} (the weights have {getattr(theirs, key)!r})"
        for key in INIT_MUST_MATCH
        if getattr(config, key) != getattr(theirs, key)
    ]
    if differences:
        raise UsageError(
            f"{path}: the run must train the network these weights were made for; it differs in "
            + "; ".join(differences),
            "init_from",
        )
    if config.steps <= int(source["step"]):
        raise UsageError(
            f"is the total over this run and the {source['step']} steps of --init-from {path}; ask for more than "
            f"{source['step']}, got {config.steps}",
            "steps",
        )


def _init_record(path: Path, source: dict) -> dict:
    import hashlib

    from .pretrained import WEIGHTS

    record = {
        "source": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "step": int(source["step"]),
    }
    provenance = path.with_suffix(".json")
    if path.resolve().parent == WEIGHTS.resolve() and provenance.is_file():
        record["provenance"] = json.loads(provenance.read_text(encoding="utf-8"))
    return record


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past ``last_step`` (logged after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["step"] <= last_step
    ]
    checkpoint.write_text(path, "".join(line + "\n" for line in kept))


def plot_loss_curve(metrics_path: Path, out_path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()]
    if not records:
        return
    steps = [r["step"] for r in records]
    losses = torch.tensor([r["loss"] for r in records])
    window = max(1, min(50, len(losses) // 10))
    smooth = torch.nn.functional.avg_pool1d(losses[None, None], window, 1).flatten()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="loss per step")
    ax.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    checkpoint.write_atomic(out_path, lambda f: f.write(buffer.getvalue()))


def run_training(
    config: TrainConfig,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> dict:
    """Train (or continue) the run in ``out``; return a summary. Raises UsageError on bad input,
    before anything is written. ``init_from`` starts a new run from trained weights (see the module docstring).

    Under torchrun every process calls this; rank 0 alone writes files (see the module docstring).
    """
    out = Path(out)
    dist = Distributed.from_env()
    state = None
    if resume:
        state = checkpoint.load(out / "checkpoints" / "last.pt", "run")
        config = config_from_dict(state["config"], f"{out / 'checkpoints' / 'last.pt'}: its config")
        if config.world_size != dist.world_size:
            raise UsageError(
                f"--resume: {out} was trained by {config.world_size} process(es) and this launch has "
                f"{dist.world_size}; resume with the same world size (torchrun --nnodes × --nproc_per_node "
                f"= {config.world_size}), or start a new run from scratch"
            )
    elif (out / "checkpoints" / "last.pt").exists():
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    config.check()
    init = None
    if init_from is not None:
        path, source = init_source(init_from)
        if resume:  # repeating the run's own command line with --resume is fine; another source is not
            started = out / "init.json"
            began = json.loads(started.read_text(encoding="utf-8"))["sha256"] if started.is_file() else None
            if began != _init_record(path, source)["sha256"]:
                raise UsageError(
                    f"{path} is not the weights the run in {out} started from; drop --init-from to resume it",
                    "init_from",
                )
        else:
            check_init(config, source, path)
            init = path, source
    if config.wandb:
        _check_wandb()
    device = dist.device(config.device)
    config = resolve_precision(config, device, resume, announce=dist.is_main)
    config.grid = replace(config.grid, seed=config.seed, bf16=config.bf16)
    config = resolve_parallelism(config, dist, device)
    if config.download and dist.is_main:  # one download, before the other ranks look for the files
        load_dataset(config.dataset, "train", root=config.data_root, download=True, verbose=False)
    dist.init(device)
    try:
        dist.barrier()
        dataset = load_dataset(
            config.dataset, "train", root=config.data_root, download=config.download, verbose=dist.is_main
        )
        if config.batch_size > len(dataset):
            raise UsageError(
                f"batch_size {config.batch_size} exceeds the {len(dataset)} training images", "batch_size"
            )
        return _train(config, out, state, progress, dist, device, dataset, init)
    finally:
        dist.shutdown()


def _train(
    config: TrainConfig, out: Path, state: dict | None, progress: bool, dist: Distributed, device: torch.device,
    dataset, init: tuple[Path, dict] | None = None,
) -> dict:  # fmt: skip
    from .generation import generate
    from .sampling import grid_image

    main = dist.is_main
    if state is not None:
        run = Run(config, out, device)
        run.resume(state, out / "checkpoints" / "last.pt")
    elif init is not None:
        run = Run(config, out, device, first_step=int(init[1]["step"]))
        run.start_from(init[1], init[0])
        if main:
            checkpoint.write_json(out / "init.json", _init_record(*init))
    else:
        run = Run(config, out, device)
    images, labels = (tensor.to(run.device) for tensor in dataset.tensors)
    if config.model.get("num_classes") is None:
        labels = None  # an unconditional model never sees them
    metrics_path = out / "metrics.jsonl"
    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "config.json", config.to_dict())
        _truncate_metrics(metrics_path, run.step)
    wandb_run = _start_wandb(config, out) if config.wandb and main else None

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    clock = {"t": time.perf_counter()}

    def evaluate() -> None:
        path = out / "samples" / f"step_{run.step:06d}.png"
        # a class-conditional model draws every digit in turn: 0, 1, ..., 9, 0, ...
        samples = generate(run.ema.model, run.scheduler, config.n_samples, config.grid)
        checkpoint.write_atomic(path, lambda f: grid_image(samples).save(f, format="png"))
        plot_loss_curve(metrics_path, out / "loss_curve.png")
        if wandb_run is not None:
            import wandb

            wandb_run.log({"samples": wandb.Image(str(path))}, step=run.step)

    def on_step(completed: int, stats: dict) -> None:
        run.step = completed
        if not main:
            return
        now = time.perf_counter()
        seconds, clock["t"] = now - clock["t"], now
        record = {"step": completed, **stats, "images_per_s": config.batch_size / seconds}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if wandb_run is not None:
            wandb_run.log({**record, "time_per_sample_s": seconds / config.batch_size}, step=completed)
        evaluating = config.eval_every > 0 and completed % config.eval_every == 0
        if evaluating or completed % config.checkpoint_every == 0:
            run.checkpoint(keep=evaluating)
        if evaluating:
            evaluate()
            clock["t"] = time.perf_counter()  # sampling time is not training throughput

    stopped_by = None
    try:
        with _StopRequest(escalate=not dist.launched) as stop:
            model = run.model
            if dist.launched:
                model = torch.nn.parallel.DistributedDataParallel(
                    run.model, device_ids=[device.index] if device.type == "cuda" else None
                )
            train(
                model, run.optimizer, run.lr_scheduler, run.scheduler, images,
                steps=config.steps, batch_size=config.batch_size, seed=config.seed, generator=run.generator,
                ema=run.ema if main else None, start_step=run.step, grad_clip=config.grad_clip, bf16=config.bf16,
                weighting=config.loss_weighting, min_snr_gamma=config.min_snr_gamma,
                labels=labels, label_dropout=config.label_dropout, on_step=on_step,
                **dist.train_hooks(config.batch_size, device, stop),
            )  # fmt: skip
            stopped_by = stop.signal_name
        if bar is not None:
            bar.close()
        if main:
            run.checkpoint()
            finished = stopped_by is None and run.step >= config.steps
            if finished and (config.eval_every <= 0 or run.step % config.eval_every != 0):
                run.checkpoint(keep=True)
                evaluate()
            plot_loss_curve(metrics_path, out / "loss_curve.png")
        dist.barrier()  # no rank returns before the run folder is complete
    finally:
        if bar is not None:
            bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    return {
        "step": run.step,
        "stopped_by": stopped_by,
        "out": str(out),
        "checkpoint": str(run.last_checkpoint),
        "rank": dist.rank,
        "world_size": dist.world_size,
    }


def _check_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UsageError("--wandb needs the wandb package: pip install wandb") from None


def _start_wandb(config: TrainConfig, out: Path):
    import wandb

    return wandb.init(
        project=config.wandb_project,
        name=config.wandb_run_name,
        config=config.to_dict(),
        dir=str(out),
        mode=config.wandb_mode,
    )
