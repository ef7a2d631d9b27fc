"""ddpm_lib.precision: one choice of device and precision, from what the hardware computes in natively.

There is no GPU or Apple silicon on the machines that run these tests, so the CUDA and mps paths are tested with the
device queries patched: the device chosen, the precision, the autocast asked for and the gradient scaler used for
each kind of device.
"""

import pytest
import torch

import ddpm_lib.precision as precision
from ddpm_lib.errors import UsageError


@pytest.fixture
def no_overrides(monkeypatch):
    monkeypatch.delenv(precision.DEVICE_ENV, raising=False)
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)


def machine(monkeypatch, cuda=None, mps=False, cpu_bf16=True):
    """Pretend this machine has a CUDA GPU of compute capability ``cuda`` (None: none), Apple's mps, and a CPU with
    or without bfloat16 instructions."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0 if cuda is None else 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cuda)
    monkeypatch.setattr(precision, "_mps_available", lambda: mps)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_bf16, raising=False)


@pytest.mark.parametrize(
    "kind, expected",
    [
        (dict(cuda=(8, 0)), ("cuda", "bfloat16", False)),  # an A100: native bfloat16
        (dict(cuda=(7, 5)), ("cuda", "float16", True)),  # a T4 (Colab): float16 with a gradient scaler
        (dict(mps=True), ("mps", "float32", False)),  # Apple silicon: not measured, float32
        (dict(cpu_bf16=True), ("cpu", "bfloat16", False)),  # AVX-512 BF16 or AMX
        (dict(cpu_bf16=False), ("cpu", "float32", False)),  # AVX2 alone: bfloat16 would be ~10x slower
        (dict(cuda=(7, 5), mps=True), ("cuda", "float16", True)),  # CUDA first
    ],
    ids=["A100", "T4", "mps", "cpu-bf16", "cpu-avx2", "cuda-before-mps"],
)
def test_auto_picks_the_device_and_the_precision_it_computes_fast_in(
    monkeypatch, no_overrides, kind, expected
):
    machine(monkeypatch, **kind)
    compute = precision.choose()
    device, chosen, scaled = expected
    assert (compute.device.type, compute.precision) == (device, chosen)
    assert (compute.grad_scaler() is not None) == scaled
    assert compute.dtype == {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[chosen]
    assert compute.describe().startswith(f"{compute.device}, {chosen}: ")


def test_the_autocast_is_the_precision_chosen(monkeypatch, no_overrides):
    x = torch.ones(4, 4)
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        machine(monkeypatch, cpu_bf16=native)
        with precision.choose("cpu").autocast():
            assert (x @ x).dtype == dtype


def test_emulated_bfloat16_on_a_gpu_is_not_native(monkeypatch):
    """torch.cuda.is_bf16_supported() counts emulation; the course asks for compute capability 8.0+."""
    machine(monkeypatch, cuda=(7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.native_bf16("cuda") is False


def test_a_pytorch_without_onednns_test_is_read_as_no_native_bfloat16(monkeypatch):
    def missing():
        raise AttributeError("a build without oneDNN")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing, raising=False)
    assert precision.native_bf16("cpu") is False


def test_environment_overrides_and_explicit_choices(monkeypatch):
    machine(monkeypatch, cpu_bf16=True)
    monkeypatch.setenv(precision.PRECISION_ENV, "float32")
    assert precision.compute().precision == "float32"
    monkeypatch.setenv(precision.PRECISION_ENV, "bfloat16")
    monkeypatch.setenv(precision.DEVICE_ENV, "cpu")
    assert (precision.compute().device.type, precision.compute().precision) == ("cpu", "bfloat16")
    assert (
        precision.choose("cpu", "float16").precision == "float16"
    )  # an explicit choice wins over the variable
    machine(monkeypatch, cpu_bf16=False)
    asked = precision.choose("cpu", "bfloat16")
    assert (
        asked.precision == "bfloat16" and "no bfloat16 instructions" in asked.reason
    )  # honoured, and said slow


@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", "device 'cuda' was asked for but no CUDA GPU is available"),
        ("mps", "device 'mps' was asked for but this machine has no Apple GPU"),
        ("tpu", "device must be one of auto, cpu, cuda, mps"),
    ],
)
def test_a_device_that_is_not_there_is_a_usage_error(monkeypatch, no_overrides, device, message):
    machine(monkeypatch)
    with pytest.raises(UsageError, match=message) as error:
        precision.resolve_device(device)
    assert error.value.option == "device"
    with pytest.raises(UsageError, match="precision must be one of"):
        precision.choose("cpu", "float8")


def test_a_launched_process_takes_its_own_gpu(monkeypatch, no_overrides):
    machine(monkeypatch, cuda=(8, 6))
    assert precision.resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="LOCAL_RANK=3 but this node has 1 visible GPU"):
        precision.resolve_device("cuda", local_rank=3)


def test_the_command_lines_refuse_mps_without_it_in_one_line(monkeypatch, tmp_path, capsys):
    from ddpm_lib.cli import main

    machine(monkeypatch)
    for command in (["sample", "--out", str(tmp_path / "x.png")], ["train", "--out", str(tmp_path / "r")]):
        assert main([*command, "--device", "mps", "--no-progress"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "--device: device 'mps' was asked for" in lines[0], lines
    assert not (tmp_path / "r").exists() and not (tmp_path / "x.png").exists()


def test_generate_samples_in_the_precision_it_chose_and_leaves_the_model_where_it_was(monkeypatch):
    from ddpm_lib.generation import generate
    from ddpm_lib.schedule import LinearBetaScheduler
    from ddpm_lib.unet import Unet

    torch.manual_seed(0)
    model = Unet(base_dim=8, dim_mults=[2], time_embedding_dim=16).eval()
    scheduler = LinearBetaScheduler(20)
    seen = []
    real_choose = precision.choose
    monkeypatch.setattr(
        "ddpm_lib.generation.choose", lambda *a, **k: seen.append(real_choose(*a, **k)) or seen[-1]
    )
    bf16 = generate(model, scheduler, 2, sampler="ddim", steps=3, precision="bfloat16")
    fp32 = generate(model, scheduler, 2, sampler="ddim", steps=3, precision="float32")
    assert [c.precision for c in seen] == ["bfloat16", "float32"]
    assert bf16.dtype == fp32.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 - fp32).abs().max() < 0.1 and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "kind, options, expected",
    [
        (dict(cpu_bf16=True), {}, "quick"),
        (dict(cpu_bf16=False), {}, "quick-float32"),  # AVX2 alone: the recipe sized for float32
        (dict(cpu_bf16=False), {"precision": "bfloat16"}, "quick"),  # asked for: the learner's choice
        (dict(cpu_bf16=True), {"precision": "float32"}, "quick-float32"),
        (dict(cuda=(7, 5), cpu_bf16=False), {}, "quick"),  # a T4: float16 on the GPU
    ],
    ids=["cpu-bf16", "cpu-avx2", "cpu-avx2-bf16-asked", "float32-asked", "T4"],
)
def test_the_quick_preset_is_its_float32_variant_where_the_cpu_computes_in_float32(
    monkeypatch, no_overrides, kind, options, expected
):
    from ddpm_lib.config import PRESETS, preset_for

    machine(monkeypatch, **kind)
    name, why = preset_for("quick", options)
    assert name == expected and (why is None) == (name == "quick")
    assert preset_for("quick-unconditional", options) == ("quick-unconditional", None)
    assert (
        PRESETS["quick-float32"]["precision"] == "float32"
        and PRESETS["quick-float32"]["model"]["base_dim"] == 16
    )


class NoBfloat16(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every operator that returns a bfloat16 tensor while it is active."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in flat):
            self.seen.append(str(func))
        return out


@pytest.mark.slow  # a short training run, its grids and a sample command: ~10 s
def test_on_a_cpu_without_bfloat16_nothing_computes_in_bfloat16(monkeypatch, no_overrides, tmp_path, capsys):
    """The README's main command (at test size) and the sample command, where the CPU has no bfloat16 instructions:
    the quick preset is its float32 variant, and not one operator returns a bfloat16 tensor. (.ci/run also runs the
    command and chapter 11 under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2, where oneDNN says so itself.)"""
    from ddpm_lib.cli import main

    machine(monkeypatch, cpu_bf16=False)
    mode = NoBfloat16()
    with mode:
        assert main(["train", "--preset", "quick", "--steps", "4", "--eval-every", "2", "--batch-size", "8",
                     "--no-progress", "--out", str(tmp_path / "demo")]) == 0  # fmt: skip
        assert main(["sample", "--n", "2", "--steps", "3", "--out", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "--preset quick is quick-float32 here" in out and "cpu, float32: this CPU has no bfloat16" in out
    assert mode.seen == []
    assert (tmp_path / "demo" / "samples" / "step_000004.png").is_file() and (tmp_path / "grid.png").is_file()
    # the same mode sees bfloat16 where it is asked for: the test can fail
    with NoBfloat16() as control, torch.autocast("cpu", dtype=torch.bfloat16):
        torch.ones(2, 2) @ torch.ones(2, 2)
    assert control.seen
