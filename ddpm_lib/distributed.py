"""Data-parallel training across processes (hand-written plumbing): torchrun → DistributedDataParallel.

``python -m ddpm_lib train`` runs in one process. Started by PyTorch's launcher instead::

    torchrun --standalone --nproc_per_node 4 -m ddpm_lib train --out runs/ddp

each of the N processes (ranks) trains a replica of the model on its share of every batch, and
``DistributedDataParallel`` averages the gradients across processes during ``backward()``, so every
replica takes the same optimiser step. What this module adds to the one-process loop:

- :class:`Distributed`: rank, local rank and world size from the launcher's environment variables
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; read here and nowhere else), the device of each process
  (``cuda:LOCAL_RANK`` on GPUs) and the backend (``nccl`` on GPUs, ``gloo`` on CPUs);
- :func:`shard`: ``--batch-size`` is the **global** batch, as for the reference's ``nn.DataParallel``;
  rank r trains on the r-th contiguous slice of it;
- :func:`sharded_loss`: every rank draws the timesteps and noise of the *whole* global batch from the
  same seeded generator and keeps its slice, so N processes compute exactly the loss terms one
  process would, and the trajectory does not depend on N (up to float rounding in the gradient sum);
- :func:`train_data_parallel`: the loop of :func:`ddpm_lib.training.train` with those two changes,
  the mean loss across ranks for logging, and a stop request (Ctrl-C, SIGTERM) that all ranks agree on
  before a step so none is left waiting in a collective.

The batch order is :func:`ddpm_lib.training.batch_stream`'s: a permutation re-drawn each epoch from
(seed, epoch), which is what ``DistributedSampler.set_epoch`` does; here the ranks split each batch
instead of each epoch, which is what makes 2 × B/2 equal 1 × B. Files (run folder, checkpoints,
metrics, sample grids, wandb, progress bar) are written by rank 0 only; see :mod:`ddpm_lib.runner`.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .schedule import NoiseSchedule
from .training import EMA, NonFiniteLossError, batch_stream, ddpm_loss

#: environment variables every launcher of the torchrun family sets in each process
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: how long a rank waits in a collective for the others (rank 0 samples grids while they wait)
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a data-parallel job. ``Distributed()`` is the one-process run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  #: started by torchrun (or another launcher that sets RANK / WORLD_SIZE)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        environ = os.environ if environ is None else environ
        present = [name for name in LAUNCHER_VARIABLES if name in environ]
        if not present:
            return cls()
        if len(present) < len(LAUNCHER_VARIABLES):
            missing = ", ".join(n for n in LAUNCHER_VARIABLES if n not in present)
            raise ValueError(
                f"{', '.join(present)} set but not {missing}: start data-parallel runs with torchrun"
            )
        try:
            rank, world_size, local_rank = (int(environ[name]) for name in LAUNCHER_VARIABLES)
        except ValueError:
            values = ", ".join(f"{n}={environ[n]!r}" for n in LAUNCHER_VARIABLES)
            raise ValueError(f"launcher variables must be integers, got {values}") from None
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(
                f"launcher variables out of range: RANK={rank} must lie in 0..WORLD_SIZE-1 "
                f"(WORLD_SIZE={world_size}) and LOCAL_RANK={local_rank} must be >= 0"
            )
        return cls(rank, local_rank, world_size, launched=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    def device(self, name: str = "auto") -> torch.device:
        """``--device`` for this process: ``cuda:LOCAL_RANK`` on GPUs when launched, else as asked."""
        if name not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
        use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
        if not use_cuda:
            return torch.device("cpu")
        if not self.launched:
            return torch.device("cuda")
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={self.local_rank} but this node has {torch.cuda.device_count()} visible GPU(s): "
                "--nproc_per_node must not exceed the GPUs per node"
            )
        return torch.device("cuda", self.local_rank)

    @staticmethod
    def backend_for(device: torch.device) -> str:
        """``nccl`` between GPUs, ``gloo`` between CPU processes."""
        return "nccl" if device.type == "cuda" else "gloo"

    def init(self, device: torch.device) -> None:
        """Join the process group (rendezvous through the launcher's MASTER_ADDR / MASTER_PORT)."""
        if not self.launched or torch.distributed.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(
            self.backend_for(device),
            timeout=TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )

    def shutdown(self) -> None:
        if self.launched and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.launched:
            torch.distributed.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all ranks (a copy; ``value`` itself is left alone)."""
        value = value.detach().clone()
        if self.launched:
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if not self.launched:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


def shard(batch_size: int, rank: int, world_size: int) -> slice:
    """The slice of a global batch that ``rank`` of ``world_size`` trains on (contiguous, equal sizes)."""
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} (the global batch) must be a multiple of the {world_size} "
            f"processes, so each trains on the same number of digits; try {world_size * max(1, batch_size // world_size)}"
        )
    per_process = batch_size // world_size
    return slice(rank * per_process, (rank + 1) * per_process)


def sharded_loss(
    model: nn.Module,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator | None,
    rank: int,
    world_size: int,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
) -> torch.Tensor:
    """:func:`ddpm_lib.training.ddpm_loss` of the global batch ``x0``, on this rank's shard only.

    ``ddpm_loss`` draws timesteps and noise for all of ``x0`` (same calls, same order as one process),
    then keeps this rank's slice: the mean over the shards of these losses is
    ``ddpm_loss(model, scheduler, x0, generator)`` with an identically seeded generator (label dropout,
    too, is drawn for the whole batch).
    """
    part = shard(x0.shape[0], rank, world_size)
    return ddpm_loss(
        model,
        scheduler,
        x0,
        generator,
        weighting,
        min_snr_gamma,
        part=part,
        labels=labels,
        label_dropout=label_dropout,
    )


def data_parallel_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler: NoiseSchedule,
    x0: torch.Tensor,
    generator: torch.Generator,
    dist: Distributed,
    grad_clip: float | None = 1.0,
    bf16: bool = False,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
) -> dict[str, float]:
    """:func:`ddpm_lib.training.train_step` for a ``DistributedDataParallel`` model and the global batch ``x0``.

    ``loss.backward()`` all-reduces (averages) the gradients across ranks, so clipping and the
    optimiser step see the same gradient everywhere. The loss returned is the mean over all ranks, and a
    non-finite loss on any rank raises :class:`NonFiniteLossError` on every rank before the update.
    """
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    with torch.autocast(device_type=x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = sharded_loss(
            model, scheduler, x0, generator, dist.rank, dist.world_size, weighting, min_snr_gamma,
            labels=labels, label_dropout=label_dropout,
        )  # fmt: skip
    mean_loss = dist.mean(loss)
    if not torch.isfinite(mean_loss):
        raise NonFiniteLossError(f"loss is {mean_loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients across ranks here, bucket by bucket
    max_norm = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    return {"loss": mean_loss.item(), "grad_norm": grad_norm.item(), "lr": lr}


def train_data_parallel(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler: NoiseSchedule,
    images: torch.Tensor,
    *,
    dist: Distributed,
    steps: int,
    batch_size: int,
    seed: int,
    generator: torch.Generator,
    ema: EMA | None = None,
    start_step: int = 0,
    grad_clip: float | None = 1.0,
    bf16: bool = False,
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    labels: torch.Tensor | None = None,
    label_dropout: float = 0.0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """:func:`ddpm_lib.training.train` for a ``DistributedDataParallel`` ``model``; ``batch_size`` is global.

    Every rank holds all ``images`` and walks the same batch order; ``ema`` (rank 0's) is updated from
    the wrapped module. A stop request on any rank stops every rank before the same step.
    """
    shard(batch_size, dist.rank, dist.world_size)  # fail before the first step, not inside it
    module = model.module if hasattr(model, "module") else model
    completed = start_step
    positions = torch.arange(len(images), device=images.device)  # the batch's rows of images and labels
    for step, rows in batch_stream(positions, batch_size, seed, start_step):
        if step >= steps:
            break
        if should_stop is not None and dist.any(should_stop(), images.device):
            break
        try:
            stats = data_parallel_step(
                model, optimizer, lr_scheduler, scheduler, images[rows], generator, dist, grad_clip, bf16,
                weighting, min_snr_gamma, labels=None if labels is None else labels[rows], label_dropout=label_dropout,
            )  # fmt: skip
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"{error} at step {step + 1}; the weights of step {step} are kept"
            ) from None
        if ema is not None:
            ema.update(module)
        completed = step + 1
        if on_step is not None:
            on_step(completed, stats)
    return completed
