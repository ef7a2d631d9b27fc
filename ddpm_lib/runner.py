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
``--bf16`` (bfloat16 autocast) works on CPUs and on GPUs that support it (compute capability 8.0+).
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from .data import load_mnist
from .distributed import Distributed, shard, train_data_parallel
from .schedule import LinearBetaScheduler, NoiseSchedule, make_schedule
from .training import EMA, make_lr_scheduler, make_optimizer, train
from .unet import Unet

#: The reference's size arguments; every other option takes chapter 03's default (dense units, GroupNorm).
DEFAULT_MODEL = {
    "timesteps": 1000,
    "time_embedding_dim": 64,
    "in_channels": 1,
    "out_channels": 1,
    "base_dim": 32,
    "dim_mults": [2, 4],
}
#: the batch size ``--lr`` is tuned for (the reference's); ``--lr-scaling`` scales from it
LR_REFERENCE_BATCH = 128
LR_SCALINGS = ("none", "linear", "sqrt")


#: Named recipes for ``python -m ddpm_lib train --preset NAME`` (options given explicitly override them;
#: ``model`` entries are merged into the U-Net options key by key).
#: ``quick``: the CPU time-to-digits recipe of chapter 04, section 8, measured in
#: ``benchmarks/time_to_digits.py`` (about 5 minutes of training on 2 CPU cores): a class-conditional U-Net
#: with two dense units per block (labels dropped 10% of the time, so that it can be guided), bfloat16
#: autocast, batch 64 at a higher LR, min-SNR-γ loss weighting, a short EMA, and grids drawn with 25-step
#: DDPM and classifier-free guidance w = 1 (chapter 09).
PRESETS = {
    "quick": {
        "steps": 1400,
        "batch_size": 64,
        "lr": 2e-3,
        "pct_start": 0.1,
        "ema_decay": 0.995,
        "bf16": True,
        "loss_weighting": "min_snr",
        "label_dropout": 0.1,
        "sampler": "ddpm",
        "sampler_steps": 25,
        "guidance": 1.0,
        "eval_every": 350,
        "model": {"units_per_block": 2, "mid_units": 2, "num_classes": 10},
    },
}


@dataclass
class TrainConfig:
    """Every option of a training run. Saved as ``config.json`` and inside each checkpoint."""

    steps: int = 3000
    batch_size: int = 128  #: the global batch: all processes together, per step
    lr: float = 1e-3  #: peak learning rate at batch LR_REFERENCE_BATCH, before ``lr_scaling``
    lr_scaling: str = "none"
    weight_decay: float = 0.01
    pct_start: float = 0.25
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    bf16: bool = False
    loss_weighting: str = "uniform"  #: "uniform" (DDPM) or "min_snr" (chapter 04, section 8)
    min_snr_gamma: float = 5.0
    #: class-conditional models (``model["num_classes"]`` set): share of labels replaced by "no label"
    label_dropout: float = 0.0
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    eval_every: int = 500
    n_samples: int = 16
    sampler: str = "clip"  #: for the sample grids: clip / ddpm (chapter 05) or ddim / dpmpp (chapter 07)
    #: network evaluations per grid sample; None: all T for clip / ddpm, 50 for ddim / dpmpp
    sampler_steps: int | None = None
    #: classifier-free guidance scale w of the grids of a class-conditional model (chapter 09; 0: none)
    guidance: float = 0.0
    checkpoint_every: int = 100
    wandb: bool = False
    wandb_project: str = "ddpm-from-scratch"
    wandb_run_name: str | None = None
    wandb_mode: str = "offline"
    num_timesteps: int = 1000
    schedule: str = "linear"  #: "linear" (beta_start, beta_end; chapter 01) or "cosine" (chapter 08)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    model: dict = field(default_factory=lambda: dict(DEFAULT_MODEL))
    # filled in by the run (see resolve_parallelism): how the batch and the learning rate were used
    world_size: int = 1
    per_process_batch_size: int | None = None
    backend: str | None = None
    effective_lr: float | None = None
    preset: str | None = None  #: the --preset the run started from, if any (its values are in the fields)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def build_model(config: TrainConfig) -> torch.nn.Module:
    return Unet(**config.model)


def schedule_for(config: TrainConfig) -> NoiseSchedule:
    """The noise schedule a run trains (and its checkpoints sample) with."""
    if config.schedule == "linear":
        return LinearBetaScheduler(config.num_timesteps, config.beta_start, config.beta_end)
    return make_schedule(config.schedule, config.num_timesteps)


def scaled_lr(lr: float, batch_size: int, rule: str = "none") -> float:
    """``lr`` for the global ``batch_size`` by ``rule``: ``none``, ``linear`` (× B/128) or ``sqrt`` (× √(B/128))."""
    if rule not in LR_SCALINGS:
        raise ValueError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}; got {rule!r}")
    ratio = batch_size / LR_REFERENCE_BATCH
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def resolve_parallelism(config: TrainConfig, dist: Distributed, device: torch.device) -> TrainConfig:
    """Check that the run fits this launch and record its world size, batch split, backend and LR."""
    shard(config.batch_size, dist.rank, dist.world_size)  # the global batch must split evenly
    if config.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
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

    def __init__(self, config: TrainConfig, out: Path, device: torch.device | None = None):
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
        self.lr_scheduler = make_lr_scheduler(self.optimizer, peak_lr, config.steps, config.pct_start)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state(self) -> dict:
        return {
            "config": asdict(self.config),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": {"generator": self.generator.get_state(), "torch": torch.get_rng_state()},
        }

    def checkpoint(self, keep: bool = False) -> Path:
        path = save_checkpoint(self.state(), self.last_checkpoint)
        if keep:
            save_checkpoint(self.state(), self.out / "checkpoints" / f"step_{self.step:06d}.pt")
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        load_state(self.model, state["model"], path)
        load_state(self.ema.model, state["ema"]["model"], path, "EMA")
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["rng"]["generator"].to("cpu"))
        torch.set_rng_state(state["rng"]["torch"].to("cpu"))
        self.step = int(state["step"])


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines past ``last_step`` (logged after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def plot_loss_curve(metrics_path: Path, out_path: Path) -> None:
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
    ax.set_ylabel("MSE(ε, ε̂)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def run_training(config: TrainConfig, out: Path, resume: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run in ``out``; return a summary. Raises on bad input.

    Under torchrun every process calls this; rank 0 alone writes files (see the module docstring).
    """
    out = Path(out)
    dist = Distributed.from_env()
    if resume:
        saved = load_checkpoint(out / "checkpoints" / "last.pt")
        config = TrainConfig.from_dict(saved["config"])
        if config.world_size != dist.world_size:
            raise ValueError(
                f"--resume: {out} was trained by {config.world_size} process(es) and this launch has "
                f"{dist.world_size}; resume with the same world size (torchrun --nnodes × --nproc_per_node "
                f"= {config.world_size}), or start a new run from scratch"
            )
    elif (out / "checkpoints" / "last.pt").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    device = dist.device(config.device)
    config = resolve_parallelism(config, dist, device)
    dist.init(device)
    try:
        return _train(config, out, resume, progress, dist, device)
    finally:
        dist.shutdown()


def _train(
    config: TrainConfig, out: Path, resume: bool, progress: bool, dist: Distributed, device: torch.device
) -> dict:
    from .sampling import save_image

    main = dist.is_main
    run = Run(config, out, device)
    if resume:
        run.resume(out / "checkpoints" / "last.pt")
    metrics_path = out / "metrics.jsonl"
    if main:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", asdict(config))
        _truncate_metrics(metrics_path, run.step)

    if config.download and main:  # one download, before the other ranks look for the files
        load_mnist("train", root=config.data_root, download=True, verbose=False)
    dist.barrier()
    dataset = load_mnist("train", root=config.data_root, download=config.download, verbose=main)
    images, labels = (tensor.to(run.device) for tensor in dataset.tensors)
    if config.model.get("num_classes") is None:
        labels = None  # an unconditional model never sees them
    wandb_run = _start_wandb(config, out) if config.wandb and main else None

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=run.step, desc="training", unit="step", dynamic_ncols=True)
    clock = {"t": time.perf_counter()}

    def evaluate() -> None:
        path = out / "samples" / f"step_{run.step:06d}.png"
        # a class-conditional model draws every digit in turn: 0, 1, ..., 9, 0, ...
        grid_labels = None if labels is None else torch.arange(config.n_samples) % config.model["num_classes"]
        grid_model = run.ema.model
        if labels is not None and config.guidance:
            from .guidance import ClassifierFreeGuidance

            grid_model = ClassifierFreeGuidance(run.ema.model, config.guidance)
        steps = config.sampler_steps or (50 if config.sampler in ("ddim", "dpmpp") else config.num_timesteps)
        if steps < config.num_timesteps or config.sampler in ("ddim", "dpmpp"):
            from .fast_sampling import fast_generate
            from .sampling import grid_image

            samples = fast_generate(
                grid_model, run.scheduler, config.n_samples, config.sampler, steps,
                seed=config.seed, bf16=config.bf16, labels=grid_labels,
            )  # fmt: skip
            grid_image(samples).save(path)
        else:
            save_image(
                grid_model,
                run.scheduler,
                path,
                size=config.n_samples,
                sampler=config.sampler,
                seed=config.seed,
                labels=grid_labels,
            )
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
            if dist.launched:
                model = torch.nn.parallel.DistributedDataParallel(
                    run.model, device_ids=[device.index] if device.type == "cuda" else None
                )
                train_data_parallel(
                    model, run.optimizer, run.lr_scheduler, run.scheduler, images, dist=dist,
                    steps=config.steps, batch_size=config.batch_size, seed=config.seed, generator=run.generator,
                    ema=run.ema if main else None, start_step=run.step, grad_clip=config.grad_clip,
                    bf16=config.bf16, weighting=config.loss_weighting, min_snr_gamma=config.min_snr_gamma,
                    labels=labels, label_dropout=config.label_dropout, on_step=on_step, should_stop=stop,
                )  # fmt: skip
            else:
                train(
                    run.model, run.optimizer, run.lr_scheduler, run.scheduler, images,
                    steps=config.steps, batch_size=config.batch_size, seed=config.seed, generator=run.generator,
                    ema=run.ema, start_step=run.step, grad_clip=config.grad_clip, bf16=config.bf16,
                    weighting=config.loss_weighting, min_snr_gamma=config.min_snr_gamma,
                    labels=labels, label_dropout=config.label_dropout, on_step=on_step, should_stop=stop,
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


def _start_wandb(config: TrainConfig, out: Path):
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb needs the wandb package: pip install wandb") from None
    return wandb.init(
        project=config.wandb_project,
        name=config.wandb_run_name,
        config=asdict(config),
        dir=str(out),
        mode=config.wandb_mode,
    )


def load_model(
    path: str | Path, ema: bool = True, device: str = "cpu"
) -> tuple[torch.nn.Module, NoiseSchedule, dict]:
    """The (EMA) model of a training checkpoint, its noise schedule and its config, ready to sample."""
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or ("ema" if ema else "model") not in state:
        raise CheckpointError(f"{path} holds no model weights to sample from")
    config = TrainConfig.from_dict(state["config"])
    try:
        model = build_model(config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: its model config cannot be built by this ddpm_lib ({error})"
        ) from None
    load_state(model, state["ema"]["model"] if ema else state["model"], path)
    scheduler = schedule_for(config)
    return model.to(device).eval(), scheduler, asdict(config)
