"""ddpm_lib.precision: bfloat16 only where the hardware computes in it; in a notebook, one call turns the CPU's
bfloat16 autocast into float32 on a CPU without bfloat16 instructions, and changes nothing elsewhere."""

import pytest
import torch

import ddpm_lib.precision as precision
from ddpm_lib.generation import generate
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.unet import Unet


@pytest.fixture
def autocast_restored(monkeypatch):
    """Whatever a test does to ``torch.autocast``, the next test sees torch's own."""
    monkeypatch.setattr(torch, "autocast", torch.autocast)


def dtype_under(device_type: str, dtype=None) -> torch.dtype:
    x = torch.ones(4, 4)
    with torch.autocast(device_type, dtype=dtype) if dtype is not None else torch.autocast(device_type):
        return (x @ x).dtype


def test_native_bf16_is_oneDNNs_test_on_the_cpu(monkeypatch):
    assert precision.native_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.native_bf16(torch.device("cpu")) is precision.native_bf16("cpu")

    def missing():
        raise AttributeError("a build without oneDNN")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing, raising=False)
    assert precision.native_bf16("cpu") is True  # no test to ask: keep what the caller asked for


@pytest.mark.parametrize("native", [True, False])
def test_use_native_precision_turns_cpu_bfloat16_autocast_off_only_without_the_instructions(
    native, monkeypatch, autocast_restored
):
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": native)
    assert precision.use_native_precision() == ("bfloat16" if native else "float32")
    assert (torch.autocast is precision._Float32OnThisCpu) is not native
    expected = torch.bfloat16 if native else torch.float32
    assert dtype_under("cpu", torch.bfloat16) == expected
    assert dtype_under("cpu") == expected  # the CPU's default autocast dtype is bfloat16
    assert dtype_under("cpu", torch.float16) == torch.float16  # other dtypes are left alone
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_disabling_twice_is_disabling_once(autocast_restored):
    original = torch.autocast
    precision.disable_cpu_bf16_autocast()
    precision.disable_cpu_bf16_autocast()
    assert torch.autocast is precision._Float32OnThisCpu and torch.autocast.__mro__[1] is original


def test_generate_asked_for_bfloat16_then_computes_exactly_as_in_float32(autocast_restored):
    torch.manual_seed(0)
    model = Unet(base_dim=8, dim_mults=(1, 2)).eval()
    scheduler = LinearBetaScheduler(50)
    options = dict(sampler="ddim", steps=3, seed=4)
    in_float32 = generate(model, scheduler, 2, bf16=False, **options)
    in_bfloat16 = generate(model, scheduler, 2, bf16=True, **options)
    precision.disable_cpu_bf16_autocast()
    assert torch.equal(generate(model, scheduler, 2, bf16=True, **options), in_float32)
    assert not torch.equal(in_bfloat16, in_float32)  # the switch is what made the difference
