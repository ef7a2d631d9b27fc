"""Small stand-in networks shared by the tests (not a test module)."""

import torch
from torch import nn


class StandIn(nn.Module):
    """A fixed, deterministic 'noise predictor': a smooth function of x and t, no weights to learn."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        scale = (t.to(x.dtype) / 1000.0).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.9 * torch.tanh(x) * (0.5 + scale) + 0.05 * torch.sin(3 * x) + self.anchor
