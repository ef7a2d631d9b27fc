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
- :meth:`Distributed.train_hooks`: what chapter 05's loop, :func:`ddpm_lib.training.train`, needs to run
  data-parallel — there is no second loop. Its hooks: ``part``, this rank's slice of each batch (every rank
  draws the timesteps and noise of the *whole* global batch from the same seeded generator and keeps its
  slice, so N processes compute exactly the loss terms one process would, and the trajectory does not
  depend on N up to float rounding in the gradient sum); ``mean_loss``, the loss averaged across ranks
  for logging and for the non-finite check every rank must agree on; and ``should_stop``, a stop request
  (Ctrl-C, SIGTERM) that all ranks agree on before a step, so none is left waiting in a collective.

The batch order is :func:`ddpm_lib.training.batch_stream`'s: a permutation re-drawn each epoch from
(seed, epoch), which is what ``DistributedSampler.set_epoch`` does; here the ranks split each batch
instead of each epoch, which is what makes 2 × B/2 equal 1 × B. Files (run folder, checkpoints,
metrics, sample grids, wandb, progress bar) are written by rank 0 only; see :mod:`ddpm_lib.runner`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .errors import UsageError

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
            raise UsageError(
                f"{', '.join(present)} set but not {missing}: start data-parallel runs with torchrun"
            )
        try:
            rank, world_size, local_rank = (int(environ[name]) for name in LAUNCHER_VARIABLES)
        except ValueError:
            values = ", ".join(f"{n}={environ[n]!r}" for n in LAUNCHER_VARIABLES)
            raise UsageError(f"launcher variables must be integers, got {values}") from None
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise UsageError(
                f"launcher variables out of range: RANK={rank} must lie in 0..WORLD_SIZE-1 "
                f"(WORLD_SIZE={world_size}) and LOCAL_RANK={local_rank} must be >= 0"
            )
        return cls(rank, local_rank, world_size, launched=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    def main_first(self, function, *args, **kwargs):
        """``function(*args, **kwargs)`` on rank 0, then (once it is done) on the other ranks: a download, say."""
        result = function(*args, **kwargs) if self.is_main else None
        self.barrier()
        return result if self.is_main else function(*args, **kwargs)

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

    def train_hooks(self, batch_size: int, device: torch.device, should_stop: Callable[[], bool]) -> dict:
        """Keyword arguments for :func:`ddpm_lib.training.train` on this process: with one process, only
        ``should_stop``; under torchrun also ``part`` (this rank's slice of every global batch) and
        ``mean_loss`` (the loss averaged over the ranks), and a ``should_stop`` that every rank agrees on."""
        if not self.launched:
            return {"should_stop": should_stop}
        return {
            "part": shard(batch_size, self.rank, self.world_size),
            "mean_loss": self.mean,
            "should_stop": lambda: self.any(should_stop(), device),
        }

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
        raise UsageError(
            f"--batch-size {batch_size} (the global batch) must be a multiple of the {world_size} "
            f"processes, so each trains on the same number of digits; try {world_size * max(1, batch_size // world_size)}"
        )
    per_process = batch_size // world_size
    return slice(rank * per_process, (rank + 1) * per_process)
