"""Training runs from the command line (hand-written plumbing around ``ddpm_lib.training``).

``python -m ddpm_lib train`` writes a run folder::

    <out>/config.json           the configuration asked for (every option, after the preset and defaults)
    <out>/run.json              what the run decided (ddpm_lib.config.RunRecord): steps, processes, batch split,
                                effective LR, device, precision
    <out>/metrics.jsonl         one JSON object per step: step, loss, lr, grad_norm, images_per_s
    <out>/loss_curve.png        the loss curve, redrawn at every evaluation and at the end
    <out>/samples/step_NNNNNN.png   a grid of EMA samples per evaluation interval
    <out>/checkpoints/last.pt   the latest checkpoint (atomic); step_NNNNNN.pt kept at each evaluation

Checkpoints hold model, EMA, optimiser, LR scheduler, step, RNG states, config and record, and load with
``weights_only=True``. :func:`resume_training` (``--resume``) reads ``last.pt`` once, refuses options that differ
from the saved run's, and continues; it reaches the same weights as an uninterrupted run (bit for bit on a CPU). Ctrl-C or SIGTERM stops after the current step and saves a
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
its slice, so N processes compute the function one process computes (their weights agree to float rounding).
Rank 0 alone writes the run folder, checkpoints, metrics, sample grids and wandb, and shows the progress bar; the
other ranks write nothing. ``run.json`` records ``world_size``, ``per_process_batch_size``,
``backend`` and ``effective_lr`` (``--lr`` scaled by ``--lr-scaling``: ``none``, ``linear`` or ``sqrt``
in batch/128, the reference's batch). ``--resume`` needs the world size the run started with and says
so otherwise. Ctrl-C / SIGTERM (torchrun forwards them) stops every rank before the same step.
**Device and precision** are chosen once, by :func:`ddpm_lib.precision.choose`, and said on the first line:
``--device auto`` takes a CUDA GPU, else Apple's ``mps``, else the CPU; ``--precision auto`` (the quick presets')
computes the forward pass in bfloat16 where the hardware does natively, in float16 with a gradient scaler on
other GPUs, and in float32 elsewhere (a CPU with AVX2 alone runs bfloat16 about ten times slower than float32).
``run.json`` records what was chosen. A resumed run keeps the precision it started with, so that it reaches the
same weights.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import checkpoint
from .config import (
    RunRecord,
    TrainConfig,
    build_model,
    config_from_dict,
    record_from_dict,
    resolve_train_config,
    scaled_lr,
    schedule_for,
)
from .data import load_dataset
from .distributed import Distributed, shard
from .errors import UsageError
from .precision import Compute, choose
from .training import EMA, make_lr_scheduler, make_optimizer, train


def plan_run(config: TrainConfig, dist: Distributed, compute: Compute, n_train: int) -> RunRecord:
    """What a new run of ``config`` decides on this launch: its steps (from ``epochs`` too), the batch split, the
    learning rate after scaling, and ``compute``'s device and precision (:func:`ddpm_lib.precision.choose`)."""
    if config.batch_size > n_train:
        raise UsageError(
            f"batch_size {config.batch_size} exceeds the {n_train} training images", "batch_size"
        )
    steps = config.steps if config.steps is not None else config.epochs * max(1, n_train // config.batch_size)
    part = shard(config.batch_size, dist.rank, dist.world_size)  # this process's slice of every batch
    return RunRecord(
        steps=steps,
        world_size=dist.world_size,
        per_process_batch_size=part.stop - part.start,
        backend=Distributed.backend_for(compute.device) if dist.launched else None,
        effective_lr=scaled_lr(config.lr, config.batch_size, config.lr_scaling),
        device=str(compute.device),
        precision=compute.precision,
    )


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

    def __init__(self, config: TrainConfig, record: RunRecord, out: Path, first_step: int = 0):
        self.config, self.record, self.out = config, record, Path(out)
        self.device = torch.device(record.device)
        torch.manual_seed(config.seed)
        self.scheduler = schedule_for(config)
        self.model = build_model(config).to(self.device)
        self.ema = EMA(self.model, decay=config.ema_decay)
        self.optimizer = make_optimizer(self.model, record.effective_lr, config.weight_decay)
        # a run continued from trained weights (--init-from) anneals over the steps it adds
        self.lr_scheduler = make_lr_scheduler(
            self.optimizer, record.effective_lr, record.steps - first_step, config.pct_start
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
            "record": self.record.to_dict(),
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


#: the options a run continued from trained weights must share with them besides the network: what it learnt
INIT_MUST_MATCH = ("num_timesteps", "schedule", "beta_start", "beta_end", "dataset", "data_root")


@dataclass(frozen=True)
class InitSource:
    """The trained weights a new run starts from (``--init-from``): their file and checkpoint content."""

    path: Path
    state: dict

    @classmethod
    def read(cls, name_or_path: str | Path) -> InitSource:
        from .pretrained import weights_file

        path = weights_file(name_or_path, option="init_from")
        return cls(path, checkpoint.load(path, ("run", "denoiser")))

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def check(self, config: TrainConfig, steps: int) -> None:
        """Refuse to continue these weights with another network, schedule or data set, or with no steps left."""
        theirs = config_from_dict(self.state["config"], f"{self.path}: its config")
        theirs = replace(theirs, model=dict(build_model(theirs).config))  # every U-Net option written out
        differences = [f"{key} {config.model.get(key)!r} (the weights have {value!r})"
                       for key, value in theirs.model.items() if config.model.get(key) != value]  # fmt: skip
        differences += [f"{key} {getattr(config, key)!r} (the weights have {getattr(theirs, key)!r})"
                        for key in INIT_MUST_MATCH if getattr(config, key) != getattr(theirs, key)]  # fmt: skip
        if differences:
            raise UsageError(
                f"{self.path}: the run must train the network these weights were made for; it differs in "
                + "; ".join(differences),
                "init_from",
            )
        if steps <= self.step:
            raise UsageError(
                f"is the total over this run and the {self.step} steps of --init-from {self.path}; ask for more "
                f"than {self.step}, got {steps}",
                "steps",
            )

    def record(self) -> dict:
        """What ``<out>/init.json`` says: the source's path, SHA-256, step and, for shipped weights, their
        training command."""
        import hashlib

        from .pretrained import WEIGHTS

        found = {"source": str(self.path), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(),
                 "step": self.step}  # fmt: skip
        provenance = self.path.with_suffix(".json")
        if self.path.resolve().parent == WEIGHTS.resolve() and provenance.is_file():
            found["provenance"] = json.loads(provenance.read_text(encoding="utf-8"))
        return found


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
    config: TrainConfig, out: Path, progress: bool = True, init_from: str | Path | None = None
) -> dict:
    """Train a new run of ``config`` into ``out``; return a summary. Bad input raises
    :class:`~ddpm_lib.errors.UsageError` before anything is written. ``init_from`` starts the run from trained
    weights (see the module docstring).

    Under torchrun every process calls this; rank 0 alone writes files (see the module docstring).
    """
    out = Path(out)
    if (out / "checkpoints" / "last.pt").exists():
        raise UsageError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out", "out"
        )
    _check_writable(out)
    init = InitSource.read(init_from) if init_from is not None else None
    return _launch(config.check(), None, out, progress, init=init)


def resume_training(
    out: Path, preset: str | None = None, options: dict | None = None, progress: bool = True,
    init_from: str | Path | None = None,
) -> dict:  # fmt: skip
    """Continue the run in ``out`` from ``checkpoints/last.pt`` (read once), as it was configured; return a summary.

    ``preset`` and ``options`` (as :func:`~ddpm_lib.config.resolve_train_config` takes them) are the ones given
    again: each must agree with the saved run (repeating the run's own command line is fine, changing it is
    refused), and so must ``init_from``, the weights the run started from."""
    out = Path(out)
    path = out / "checkpoints" / "last.pt"
    state = checkpoint.load(path, "run")
    config = config_from_dict(state["config"], f"{path}: its config")
    record = record_from_dict(state["record"], f"{path}: its record")
    check_resume_options(config, preset, options or {}, out)
    dist = Distributed.from_env()
    if record.world_size != dist.world_size:
        raise UsageError(
            f"--resume: {out} was trained by {record.world_size} process(es) and this launch has "
            f"{dist.world_size}; resume with the same world size (torchrun --nnodes × --nproc_per_node "
            f"= {record.world_size}), or start a new run from scratch"
        )
    if init_from is not None:
        started = out / "init.json"
        began = json.loads(started.read_text(encoding="utf-8"))["sha256"] if started.is_file() else None
        if began != InitSource.read(init_from).record()["sha256"]:
            raise UsageError(
                f"{init_from} is not the weights the run in {out} started from; drop --init-from to resume it",
                "init_from",
            )
    return _launch(config, (state, record), out, progress)


def check_resume_options(saved: TrainConfig, preset: str | None, options: dict, out: Path) -> None:
    """Refuse a preset or options that differ from the saved run's (UsageError naming each, with its flag)."""
    from .config import option_flag

    differences = []
    if preset is not None and preset != saved.preset:
        differences.append(f"--preset {preset} (the run has {saved.preset})")
    asked = resolve_train_config(saved.preset if preset is None else preset, **options)
    names = [name for name in options if name not in ("grid", "model")]
    names += [f"grid.{name}" for name in options.get("grid", {})]
    names += [f"model.{name}" for name in options.get("model", {})]
    for name in names:
        value, kept = (_field(config, name) for config in (asked, saved))
        if value != kept:
            differences.append(f"{option_flag(name)} {_shown(value)} (the run has {_shown(kept)})")
    if differences:
        raise UsageError(
            f"--resume continues the run in {out} as it was configured; these options differ from it: "
            + "; ".join(differences)
        )


def _field(config: TrainConfig, name: str):
    part, _, key = name.partition(".")
    if part == "grid":
        return getattr(config.grid, key)
    if part == "model":
        return config.model.get(key)
    return getattr(config, name)


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_writable(out: Path) -> None:
    """A run folder that cannot be created is bad input, said before anything runs (and nothing is created)."""
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create the run folder {out}: {existing} is not a folder this user can write to",
                         "out")  # fmt: skip


def _launch(config: TrainConfig, resumed: tuple[dict, RunRecord] | None, out: Path, progress: bool,
            init: InitSource | None = None) -> dict:  # fmt: skip
    dist = Distributed.from_env()
    shard(config.batch_size, dist.rank, dist.world_size)  # an uneven batch fails before the rendezvous
    # one choice of device and precision; a resumed run keeps the precision it started in, to reach the same weights
    asked = config.precision if resumed is None else resumed[1].precision
    compute = choose(config.device, asked, local_rank=dist.local_rank if dist.launched else None)
    if config.wandb:
        _check_wandb()
    if dist.is_main:
        print(f"device and precision: {compute.describe()}", flush=True)
    dist.init(compute.device)
    try:
        dataset = dist.main_first(load_dataset, config.dataset, "train", root=config.data_root,
                                  download=config.download, verbose=dist.is_main)  # fmt: skip
        if resumed is None:
            state, record = None, plan_run(config, dist, compute, len(dataset))
            if init is not None:
                init.check(config, record.steps)
        else:
            state, record = resumed[0], replace(resumed[1], device=str(compute.device))
        return _train(config, record, out, state, progress, dist, dataset, init, compute.grad_scaler())
    finally:
        dist.shutdown()


def _train(
    config: TrainConfig, record: RunRecord, out: Path, state: dict | None, progress: bool, dist: Distributed,
    dataset, init: InitSource | None = None, grad_scaler: torch.amp.GradScaler | None = None,
) -> dict:  # fmt: skip
    from .generation import generate
    from .sampling import grid_image

    main = dist.is_main
    if state is not None:
        run = Run(config, record, out)
        run.resume(state, out / "checkpoints" / "last.pt")
    elif init is not None:
        run = Run(config, record, out, first_step=init.step)
        run.start_from(init.state, init.path)
        if main:
            checkpoint.write_json(out / "init.json", init.record())
    else:
        run = Run(config, record, out)
    images, labels = (tensor.to(run.device) for tensor in dataset.tensors)
    if config.model.get("num_classes") is None:
        labels = None  # an unconditional model never sees them
    metrics_path = out / "metrics.jsonl"
    # the grids: the run's seed, device and precision
    grid = replace(
        config.grid, seed=config.seed, device=torch.device(record.device).type, precision=record.precision
    )
    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "config.json", config.to_dict())
        checkpoint.write_json(out / "run.json", record.to_dict())
        _truncate_metrics(metrics_path, run.step)
    wandb_run = _start_wandb(config, record, out) if config.wandb and main else None

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=record.steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    clock = {"t": time.perf_counter()}

    def evaluate() -> None:
        path = out / "samples" / f"step_{run.step:06d}.png"
        # a class-conditional model draws every digit in turn: 0, 1, ..., 9, 0, ...
        samples = generate(run.ema.model, run.scheduler, config.n_samples, grid)
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
        line = {"step": completed, **stats, "images_per_s": config.batch_size / seconds}
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{line['images_per_s']:.0f}")
        if wandb_run is not None:
            wandb_run.log({**line, "time_per_sample_s": seconds / config.batch_size}, step=completed)
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
                    run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None
                )
            train(
                model, run.optimizer, run.lr_scheduler, run.scheduler, images,
                steps=record.steps, batch_size=config.batch_size, seed=config.seed, generator=run.generator,
                ema=run.ema if main else None, start_step=run.step, grad_clip=config.grad_clip, precision=record.precision,
                weighting=config.loss_weighting, min_snr_gamma=config.min_snr_gamma,
                labels=labels, label_dropout=config.label_dropout, on_step=on_step,
                grad_scaler=grad_scaler, **dist.train_hooks(config.batch_size, run.device, stop),
            )  # fmt: skip
            stopped_by = stop.signal_name
        if bar is not None:
            bar.close()
        if main:
            run.checkpoint()
            finished = stopped_by is None and run.step >= record.steps
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


def _start_wandb(config: TrainConfig, record: RunRecord, out: Path):
    import wandb

    return wandb.init(
        project=config.wandb_project,
        name=config.wandb_run_name,
        config={**config.to_dict(), "run": record.to_dict()},
        dir=str(out),
        mode=config.wandb_mode,
    )
