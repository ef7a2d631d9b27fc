"""The stand-in networks the tests share (not a test module): every test that needs a fake denoiser
imports it from here."""

import torch
from torch import nn


class StandIn(nn.Module):
    """A fixed, deterministic 'noise predictor': a smooth function of x and t, no weights to learn."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # so it has a device and parameters

    def forward(self, x, t):
        scale = (t.to(x.dtype) / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.9 * torch.tanh(x) * (0.5 + scale) + 0.05 * torch.sin(3 * x) + self.anchor


class ConditionalStandIn(StandIn):
    """A class-conditional stand-in (``config["num_classes"]`` like a Unet): label y shifts the prediction by
    0.01·(y + 1); y = −1 ("no label") gives the unconditional :class:`StandIn`."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.config = {"num_classes": num_classes}

    def forward(self, x, t, y=None):
        out = super().forward(x, t)
        if y is None:
            return out
        y = torch.as_tensor(y, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return out + 0.01 * (y.to(x.dtype) + 1)


class CountCalls(nn.Module):
    """Wraps a network and counts its calls (``.calls``)."""

    def __init__(self, network):
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, x, t, *rest):
        self.calls += 1
        return self.network(x, t, *rest)


def oracle_for(scheduler, x0: torch.Tensor):
    """A perfect noise predictor for images noised from ``x0``: ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""

    def predict(x_t, t):
        alpha_bar = scheduler.alpha_bars[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()

    return predict
