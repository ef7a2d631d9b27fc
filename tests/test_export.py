"""ddpm_lib.export and the "Try it" page's sampler: the ONNX graphs against PyTorch, and the JavaScript
sampler (web/try_it/sampler.js, run under Node.js) against the Python samplers, step for step."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lib.cli import main
from ddpm_lib.diffusion import convert_prediction, prediction_of
from ddpm_lib.export import NoiseOutput, onnx_bytes
from ddpm_lib.fast_sampling import ddim_step, timesteps_for
from ddpm_lib.guidance import ClassifierFreeGuidance
from ddpm_lib.pretrained import load_pretrained
from ddpm_lib.sampling import predict_noise, reverse_step
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.unet import Conditioned, Unet

ROOT = Path(__file__).resolve().parents[1]
SAMPLER_JS = ROOT / "web" / "try_it" / "sampler.js"
NODE = shutil.which("node")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    for name in ("ddpm_mnist_cond", "ddpm_mnist"):
        assert main(["export-onnx", "--weights", name, "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddpm_mnist_cond", "ddpm_mnist"])
def test_the_onnx_graph_computes_what_pytorch_computes(exported, name):
    model, scheduler, _ = load_pretrained(name)
    session = ort.InferenceSession(str(exported / f"{name}.onnx"))
    tables = json.loads((exported / f"{name}.json").read_text())
    conditional = tables["num_classes"] is not None
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 5, 32):  # the batch dimension is dynamic
        x = torch.randn((batch, 1, 28, 28), generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator)
        y = torch.randint(-1, 10, (batch,), generator=generator)  # -1: no label
        feeds = {"x": x.numpy(), "t": t.numpy(), **({"y": y.numpy()} if conditional else {})}
        (eps,) = session.run(None, feeds)
        with torch.no_grad():
            output = model(x, t, y) if conditional else model(x, t)
            alpha_bars = scheduler.alpha_bars64[t].to(torch.float32)
            expected = convert_prediction(output, x, alpha_bars, prediction_of(model), "eps").numpy()
        assert np.abs(eps - expected).max() <= 1e-4, (name, batch)
    assert tables["network_predicts"] == prediction_of(model)
    assert tables["alpha_bars"] == scheduler.alpha_bars64.tolist()  # the package's float64 numbers, exactly
    assert tables["num_timesteps"] == 1000 and tables["inputs"] == (
        ["x", "t", "y"] if conditional else ["x", "t"]
    )


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_a_v_or_x0_network_is_exported_as_a_noise_predictor(prediction, num_classes):
    """The graph of a v- or x0-predicting network outputs what the Python samplers' predict_noise gives."""
    torch.manual_seed(0)
    model = Unet(
        base_dim=8, dim_mults=[2], attention=[1], num_classes=num_classes, prediction=prediction
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # away from the zero-initialised output layers
            parameter.add_(0.1 * torch.randn_like(parameter))
    scheduler = LinearBetaScheduler(1000)
    session = ort.InferenceSession(onnx_bytes(NoiseOutput(model, scheduler)))
    x = torch.randn((3, 1, 28, 28))
    y = torch.tensor([0, 2, -1])
    for step in (0, 1, 500, 999):
        t = torch.full((3,), step)
        feeds = {"x": x.numpy(), "t": t.numpy(), **({"y": y.numpy()} if num_classes else {})}
        (eps,) = session.run(None, feeds)
        network = model if num_classes is None else Conditioned(model, y)
        with torch.no_grad():
            expected = predict_noise(network, x, step, scheduler)
        scale = expected.abs().max().item()
        assert np.abs(eps - expected.numpy()).max() <= 1e-4 * max(1.0, scale), (prediction, step)


def test_a_noise_output_wrapper_says_it_predicts_noise():
    model = Unet(base_dim=8, dim_mults=[2], prediction="v")
    wrapped = NoiseOutput(model, LinearBetaScheduler(1000))
    assert prediction_of(wrapped) == "eps" and model.config["prediction"] == "v"


def run_js(code: str):
    """Run ES-module JavaScript that imports sampler.js as `S` and prints one JSON value."""
    if NODE is None:
        pytest.skip("no node on this machine")
    script = f'import * as S from "{SAMPLER_JS.as_uri()}";\n{code}'
    result = subprocess.run(
        [NODE, "--input-type=module"], input=script, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_page_visits_chapter_08s_trailing_timesteps():
    got = run_js(
        "console.log(JSON.stringify([...Array(1000).keys()].map((k) => S.trailingTimesteps(1000, k + 1))));"
    )
    for steps, timesteps in enumerate(got, start=1):
        assert timesteps == timesteps_for(1000, steps, "trailing").tolist(), steps


def one_step_in_js(abar, t, s, x, eps_cond, eps_uncond, w, sampler, z):
    payload = json.dumps({"abar": abar, "t": t, "s": s, "x": x.flatten().tolist(), "c": eps_cond.flatten().tolist(),
                          "u": eps_uncond.flatten().tolist(), "w": w, "sampler": sampler,
                          "z": None if z is None else z.flatten().tolist()})  # fmt: skip
    code = f"""
const p = {payload};
const n = p.x.length / 784;
// a stand-in network: the conditional half gets p.c, the "no label" half p.u (what the exported graph returns)
const predict = async (x, t, labels, count) => {{
  const out = new Float32Array(count * 784);
  for (let k = 0; k < count; k++) out.set(labels[k] === -1 ? p.u.slice(k % n * 784, (k % n + 1) * 784) : p.c.slice(k % n * 784, (k % n + 1) * 784), k * 784);
  return out;
}};
const {{ next, x0 }} = await S.reverseStep({{ predict, abar: p.abar, t: p.t, s: p.s, x: Float32Array.from(p.x),
  labels: Array(n).fill(3), w: p.w, n, sampler: p.sampler, z: p.z && Float32Array.from(p.z) }});
console.log(JSON.stringify({{ next: Array.from(next), x0: Array.from(x0) }}));
"""
    return run_js(code)


@pytest.mark.parametrize(
    "sampler, t, s, w",
    [
        ("clip", 999, 959, 1.0),
        ("clip", 400, 360, 2.5),
        ("clip", 39, -1, 1.0),
        ("clip", 500, 499, 0.0),
        ("ddim", 999, 899, 1.0),
        ("ddim", 99, -1, 4.0),
    ],  # fmt: skip
)
def test_one_step_of_the_page_is_one_step_of_the_python_sampler(sampler, t, s, w):
    """Given x_t, t, the noise z, the label's and the unlabelled prediction and w, the page's step equals
    ClassifierFreeGuidance + reverse_step (clip) or ddim_step (eta = 0), to 1e-4."""
    _, scheduler, _ = load_pretrained("ddpm_mnist_cond")
    generator = torch.Generator().manual_seed(t)
    x = 1.5 * torch.randn((2, 1, 28, 28), generator=generator)
    eps_cond, eps_uncond = torch.randn((2, 2, 1, 28, 28), generator=generator)
    guided = (1 + w) * eps_cond - w * eps_uncond  # ClassifierFreeGuidance's formula, checked below
    spy = ClassifierFreeGuidance(_TwoHeads(eps_cond, eps_uncond), w)
    assert torch.allclose(spy(x, torch.full((2,), t), torch.tensor([3, 3])), guided)
    z = (
        torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        if sampler == "clip" and s >= 0
        else None
    )
    if sampler == "clip":
        expected = reverse_step(
            scheduler, t, s, guided, x, clip=True, generator=torch.Generator().manual_seed(7)
        )
    else:
        expected = ddim_step(scheduler, t, s, guided, x, eta=0.0)
    got = one_step_in_js(scheduler.alpha_bars64.tolist(), t, s, x, eps_cond, eps_uncond, w, sampler, z)
    assert np.abs(np.array(got["next"]) - expected.flatten().numpy()).max() <= 1e-4


class _TwoHeads(torch.nn.Module):
    """A conditional stand-in returning fixed predictions: ``cond`` for a label, ``uncond`` for -1."""

    def __init__(self, cond, uncond):
        super().__init__()
        self.cond, self.uncond, self.config = cond, uncond, {"num_classes": 10}

    def forward(self, x, t, y):
        n = len(self.cond)
        rows = torch.arange(len(x)) % n
        return torch.where((y == -1).reshape(-1, 1, 1, 1), self.uncond[rows], self.cond[rows])


def test_the_page_draws_gaussian_noise():
    values = np.array(run_js("console.log(JSON.stringify(Array.from(S.normals(3)(20000))));"))
    again = np.array(run_js("console.log(JSON.stringify(Array.from(S.normals(3)(20000))));"))
    assert np.array_equal(values, again)  # seeded
    assert abs(values.mean()) < 0.03 and abs(values.std() - 1) < 0.03
    assert abs(((values > 1.96) | (values < -1.96)).mean() - 0.05) < 0.01
