"""Which precision this machine computes fast in: bfloat16 where the hardware has it, float32 elsewhere.

The course's cells, presets and commands ask for bfloat16 autocast where it pays (chapter 04's throughput table:
about 1.5x for sampling, more for training, on a CPU with bfloat16 instructions). It pays only where the hardware
computes in bfloat16: a GPU of compute capability 8.0+, or a CPU with AVX-512 BF16 or AMX (x86) or BF16 (Arm).
On a CPU without them, such as an x86 laptop with AVX2 alone, PyTorch runs bfloat16 on generic kernels, ten to
fifteen times slower than float32 (the engineering notes, chapter 04).

- :func:`native_bf16` tells which kind of machine this is (oneDNN's own test on the CPU).
- ``python -m ddpm_lib train``, ``sample`` and ``evaluate`` use float32 on a CPU without bfloat16 and say so
  (:data:`NO_NATIVE_BF16`; ``ddpm_lib.runner``).
- In a notebook, :func:`use_native_precision` does the same for every cell that follows: on such a CPU it makes
  bfloat16 autocast on the CPU a no-op (:func:`disable_cpu_bf16_autocast`), so a cell that asks for bfloat16
  computes in float32; elsewhere it changes nothing. The test suite's chapter runs call it too
  (``tools/chapter_run.py``). A cell's numbers then are float32 ones, close to but not the same as the
  bfloat16 ones stored in the chapters.
"""

from __future__ import annotations

import torch

from .errors import UsageError

NO_NATIVE_BF16 = (
    "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so bfloat16 runs about ten times slower "
    "than float32 here"
)


def resolve_device(name: str = "auto") -> torch.device:
    """``--device``: ``auto`` (a CUDA GPU if there is one, else the CPU), ``cpu`` or ``cuda``."""
    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}", "device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device 'cuda' was asked for but no CUDA GPU is available; use --device cpu", "device"
        )
    return torch.device(name)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes in bfloat16 natively, so that bfloat16 autocast is faster than float32: a GPU
    of compute capability 8.0+, or a CPU with bfloat16 instructions as oneDNN reports them (AVX-512 BF16 or AMX
    on x86, BF16 on Arm). An x86 CPU with AVX2 alone has none."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN's test: keep what was asked for
            return True
    return True


class _Float32OnThisCpu(torch.autocast):
    """``torch.autocast`` with bfloat16 autocast on the CPU turned off (:func:`disable_cpu_bf16_autocast`)."""

    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        asked = dtype if dtype is not None else torch.get_autocast_dtype(device_type)
        if device_type == "cpu" and asked == torch.bfloat16:
            enabled = False
        super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def disable_cpu_bf16_autocast() -> None:
    """From now on, in this process, ``torch.autocast("cpu", dtype=torch.bfloat16)`` (and CPU autocast with its
    default dtype, bfloat16) computes in float32; every other device and dtype is left as it is. Code that
    reached ``torch.autocast`` through ``torch.autocast`` at the time of the call (the course's code does) is
    affected; a reference taken earlier (``from torch import autocast``) is not."""
    if torch.autocast is not _Float32OnThisCpu:
        torch.autocast = _Float32OnThisCpu


def use_native_precision() -> str:
    """On a CPU without bfloat16 instructions, :func:`disable_cpu_bf16_autocast`; say which precision the CPU's
    bfloat16 autocast now computes in: ``"bfloat16"`` or ``"float32"``. Call it once, at the top of a notebook."""
    if native_bf16("cpu"):
        return "bfloat16"
    disable_cpu_bf16_autocast()
    return "float32"
