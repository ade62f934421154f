"""Hardware-specific fast paths, chosen once when a model is loaded (``apply``).

``tagger.engine.model`` is the plain reference. A path lives here only while
``benchmarks/bench_model_paths.py`` shows that it pays against the plain path on the machine
it is for, measured in the same run (numbers and decisions in docs/MODEL.md). Today one does:

* **A head stored in bf16, computed in float32** (the CPU default): widening a slab of rows at
  a time into one small reused buffer is exact (bf16 → float32 loses nothing) and keeps one
  copy of the weights, half of a float32 copy's; widening the whole weight per call is slower
  still. Slower per call than a float32 copy on an AVX2-only CPU; the memory is worth it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tagger.engine.model import TaggerModel


class WidenedLinear(nn.Module):
    """``Linear`` whose weight is stored narrower than float32 and computed in float32."""

    rows_per_slab = 512

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()  # the same tensors under the same names: the state dict is unchanged
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # ``out=`` kernels record no gradient
            return F.linear(x, self.weight.float(), None if self.bias is None else self.bias.float())
        x2 = x.reshape(-1, self.in_features)
        out = x2.new_empty(x2.shape[0], self.out_features)
        rows = min(self.rows_per_slab, self.out_features)
        weight = x2.new_empty(rows, self.in_features)
        bias = None if self.bias is None else x2.new_empty(rows)
        for start in range(0, self.out_features, rows):
            stop = min(start + rows, self.out_features)
            w = weight[: stop - start].copy_(self.weight[start:stop])
            if bias is None or self.bias is None:
                torch.mm(x2, w.t(), out=out[:, start:stop])
            else:
                torch.addmm(bias[: stop - start].copy_(self.bias[start:stop]), x2, w.t(), out=out[:, start:stop])
        return out.view(*x.shape[:-1], self.out_features)


def apply(model: TaggerModel) -> TaggerModel:
    """Install the fast paths that fit how ``model`` was loaded; returns it."""
    layers = model.head.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear) and layer.weight.dtype != torch.float32:
            layers[i] = WidenedLinear(layer.weight, layer.bias)
    return model
