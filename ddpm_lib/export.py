"""The shipped denoisers for the browser (hand-written plumbing): ONNX graphs and the samplers' tables.

``python -m ddpm_lib export-onnx --weights ddpm_mnist_cond --out DIR`` writes

- ``DIR/NAME.onnx``: the U-Net as an ONNX graph (opset 17) with a dynamic batch dimension. Inputs
  ``x`` (float32, B×1×28×28) and ``t`` (int64, B), and for a class-conditional model ``y`` (int64, B;
  −1 means "no label", which classifier-free guidance needs); output ``eps`` (float32, B×1×28×28). A network
  that predicts v or x_0 (chapter 02, section 6) is exported with chapter 02's conversion to ε inside the graph
  (:class:`NoiseOutput`), so the page's samplers always read noise;
- ``DIR/NAME.json``: what a sampler needs besides the network, written by this package so that the
  browser uses its numbers rather than re-deriving them: the schedule's ᾱ_t in float64 (the samplers'
  coefficients come from it, exactly as :func:`ddpm_lib.sampling.posterior_step` computes them), T, the
  number of classes, the image shape, the schedule's name and the weights' provenance summary.

The book's "Try it" page (``try_it.md``, ``web/try_it/``) samples these in the reader's browser with
onnxruntime-web; ``tests/test_export.py`` checks the graph against PyTorch and the page's sampler
against the Python one. ``onnx`` and ``onnxruntime`` are needed only here and in those tests.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from . import checkpoint
from .errors import UsageError

OPSET = 17
IMAGE_SHAPE = (1, 28, 28)


def sampler_tables(scheduler, model_config: dict, summary: str) -> dict:
    """The JSON a browser sampler reads next to the graph (see the module docstring)."""
    from . import __version__

    return {
        "format": "ddpm_lib.onnx_tables",
        "ddpm_lib_version": __version__,
        "num_timesteps": scheduler.num_timesteps,
        "alpha_bars": [float(a) for a in scheduler.alpha_bars64.tolist()],
        "schedule": type(scheduler).__name__,
        "num_classes": model_config.get("num_classes"),
        "image_shape": list(IMAGE_SHAPE),
        "inputs": ["x", "t", "y"] if model_config.get("num_classes") is not None else ["x", "t"],
        "summary": summary,
    }


class NoiseOutput(torch.nn.Module):
    """A denoiser whose output is ε̂, whatever its network predicts: ``convert_prediction`` (chapter 02, section 6)
    with ᾱ_t looked up per image in the schedule's table, so that it can be traced into the graph.

    The table is the schedule's float64 ᾱ, rounded to float32 inside the graph; the Python samplers convert with
    the float64 value, which differs from it by less than 1e-7 relative.
    """

    def __init__(self, model: torch.nn.Module, scheduler) -> None:
        super().__init__()
        from .diffusion import prediction_of

        self.model, self.prediction = model, prediction_of(model)
        self.config = {**model.config, "prediction": "eps"}  # what this module outputs
        self.register_buffer("alpha_bars", scheduler.alpha_bars64.to(torch.float32).clone(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        from .diffusion import convert_prediction

        output = self.model(x, t, *labels)
        return convert_prediction(output, x, self.alpha_bars[t], self.prediction, "eps")


def onnx_bytes(model: torch.nn.Module, opset: int = OPSET) -> bytes:
    """``model`` (eval mode, CPU; a noise predictor, or a :class:`NoiseOutput`) as a serialised ONNX graph with a
    dynamic batch dimension."""
    conditional = model.config.get("num_classes") is not None
    x = torch.zeros((2, *IMAGE_SHAPE))
    t = torch.tensor([999, 0])
    inputs = (x, t, torch.tensor([0, -1])) if conditional else (x, t)
    names = ["x", "t", "y"][: len(inputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the U-Net's input checks compare tensor values in Python: the tracer records the path the example
        # inputs take (no error raised), which is right for every valid input
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval().cpu(),
            inputs,
            buffer,
            input_names=names,
            output_names=["eps"],
            dynamic_axes={name: {0: "batch"} for name in [*names, "eps"]},
            opset_version=opset,
            dynamo=False,  # torch.export cannot trace the value checks; the tracing exporter records the path
        )
    return buffer.getvalue()


def export(
    name: str | None, checkpoint_path: str | Path | None, out: str | Path, opset: int = OPSET
) -> tuple[Path, Path]:
    """Export the shipped weights ``name`` (or the checkpoint at ``checkpoint_path``) into the folder ``out``.

    Returns the paths of the ``.onnx`` and ``.json`` files written (atomically).
    """
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
    except ImportError:
        raise UsageError("export-onnx needs the onnx package: pip install onnx onnxruntime") from None
    if (name is None) == (checkpoint_path is None):
        raise UsageError(
            "give the shipped weights' name or a checkpoint path, not both or neither", "weights"
        )
    if checkpoint_path is not None:
        path, stem = Path(checkpoint_path), Path(checkpoint_path).stem
        model, scheduler, _ = checkpoint.load_denoiser(path)
        summary = f"the checkpoint {path}"
    else:
        from .pretrained import pretrained_path, provenance

        try:
            path, stem = pretrained_path(name), name
        except UsageError as error:
            raise UsageError(str(error), "weights") from None
        model, scheduler, _ = checkpoint.load_denoiser(path)
        summary = f"the shipped weights {name} ({provenance(name)['summary']})"
    from .diffusion import prediction_of

    prediction = prediction_of(model)
    out = Path(out)
    graph = onnx_bytes(model if prediction == "eps" else NoiseOutput(model, scheduler), opset)
    onnx_path = checkpoint.write_atomic(out / f"{stem}.onnx", lambda f: f.write(graph))
    tables = {
        **sampler_tables(scheduler, model.config, summary),
        "onnx": onnx_path.name,
        "name": stem,
        "network_predicts": prediction,  # the graph's output is ε either way
    }
    json_path = checkpoint.write_text(out / f"{stem}.json", json.dumps(tables) + "\n")
    return onnx_path, json_path
