"""The device and the precision, decided once (hand-written plumbing).

Every loop of the course — a chapter's cells, ``python -m ddpm_lib train``, ``sample`` and ``evaluate``, the
data-parallel runs and the benchmarks — computes on the device and in the precision :func:`choose` picks, from what
the hardware does natively:

- **the device** (``auto``): a CUDA GPU if there is one (under torchrun, this process's), else Apple's ``mps``,
  else the CPU. Asking for a device that is not there is a :class:`~ddpm_lib.errors.UsageError`.
- **the precision** of the network's forward pass (``auto``): bfloat16 where the hardware computes in it natively —
  a CPU with AVX-512 BF16 or AMX (x86) or BF16 (Arm), as oneDNN reports it, or a GPU of compute capability 8.0+ —
  where it is about 1.5x (sampling) to several times (training) faster than float32 (chapter 04's benchmarks). A GPU
  without it (a T4) computes in float16, with a gradient scaler when training. Everywhere else float32: a CPU with
  AVX2 alone runs bfloat16 on generic kernels, ten to thirty times slower than float32; on ``mps`` the course has
  not measured bfloat16 or float16, so it takes float32. The sampling chains and the loss stay float32 in any case.

``DDPM_DEVICE`` and ``DDPM_PRECISION`` override the ``auto`` choices (learners, CI). :func:`compute` is the choice for
this machine, which a chapter's set-up cell prints (``compute().describe()``) and passes on.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DEVICE_ENV = "DDPM_DEVICE"
PRECISION_ENV = "DDPM_PRECISION"
#: the autocast dtype of each precision (None: no autocast)
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
NO_NATIVE_BF16 = (
    "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so bfloat16 runs about ten times slower "
    "than float32 here"
)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``--device``: ``auto`` (``$DDPM_DEVICE`` if set, else CUDA, then ``mps``, then the CPU), ``cpu``, ``cuda`` or
    ``mps``; under torchrun (``local_rank``) the process's own GPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if name not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {name!r}", "device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "device 'cuda' was asked for but no CUDA GPU is available; use --device cpu", "device"
            )
        if local_rank is None:
            return torch.device("cuda")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} visible GPU(s): "
                "--nproc_per_node must not exceed the GPUs per node",
                "device",
            )
        return torch.device("cuda", local_rank)
    if name == "mps" and not _mps_available():
        raise UsageError("device 'mps' was asked for but this machine has no Apple GPU for PyTorch; use --device cpu",
                         "device")  # fmt: skip
    return torch.device(name)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively: a GPU of compute capability 8.0+ (emulated bfloat16, which
    ``torch.cuda.is_bf16_supported`` also counts, does not count), or a CPU with bfloat16 instructions as oneDNN
    reports them (AVX-512 BF16 or AMX on x86, BF16 on Arm). A PyTorch without oneDNN's test, and ``mps``: no."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@dataclass(frozen=True)
class Compute:
    """Where and in what precision the network runs, and why (:func:`choose`)."""

    device: torch.device
    precision: str  #: float32, bfloat16 or float16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: float32, no autocast)."""
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The network's forward passes inside it compute in this precision."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for float16 training (its small range underflows gradients otherwise); else None."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "float16" else None

    def describe(self) -> str:
        """One line: ``cpu, float32: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX)``."""
        return f"{self.device}, {self.precision}: {self.reason}"


def choose(
    device: str | torch.device = "auto", precision: str = "auto", *, local_rank: int | None = None
) -> Compute:
    """The device (:func:`resolve_device`) and the precision to compute in there: ``auto`` (``$DDPM_PRECISION`` if
    set, else what the hardware computes in natively; the module docstring) or one asked for."""
    device = resolve_device(device, local_rank)
    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", "precision")
    if precision != "auto":
        slow = precision == "bfloat16" and device.type in ("cpu", "cuda") and not native_bf16(device)
        return Compute(device, precision, f"asked for{'; ' + NO_NATIVE_BF16 if slow and device.type == 'cpu' else ''}"
                       f"{'; this GPU emulates bfloat16 (compute capability below 8.0)' if slow and device.type == 'cuda' else ''}")  # fmt: skip
    if device.type == "cpu":
        if native_bf16(device):
            return Compute(device, "bfloat16", "this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX)")
        return Compute(device, "float32", "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX)")
    if device.type == "cuda":
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        if native_bf16(device):
            return Compute(
                device, "bfloat16", f"this GPU (compute capability {capability}) computes in bfloat16"
            )
        return Compute(device, "float16", f"this GPU (compute capability {capability}) has no native bfloat16; "
                       "float16, with a gradient scaler when training")  # fmt: skip
    return Compute(device, "float32", f"{device.type}: the course has not measured bfloat16 or float16 there")


def compute() -> Compute:
    """The device and precision of this machine (``$DDPM_DEVICE``, ``$DDPM_PRECISION`` if set): what a chapter
    trains and samples with."""
    return choose()
