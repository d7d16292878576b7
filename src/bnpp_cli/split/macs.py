"""Per-node compute of a traced model: MACs from ``torch.utils.flop_counter``.

Convention: MACs, never FLOPs (1 MAC = 2 FLOPs). Counted: convolutions, linear layers and matrix
products (PyTorch's own formulas), attention matmuls included, plus normalisation layers at one MAC
per output element (their affine scale-and-shift, y = a * x + b in eval mode), which is what brings
the totals in line with the GMACs timm publishes. Element-wise activations, additions and pooling
are not MACs and are not counted.

PyTorch's CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``) has no flop
formula and would count as zero, so counting runs under the MATH attention backend, which
decomposes attention into the matmuls it really is.
"""

from __future__ import annotations

import math

import torch
from torch import fx
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _per_output_element(*args, out_shape=None, **kwargs) -> int:
    shape = out_shape[0] if isinstance(out_shape, (tuple, list)) and isinstance(out_shape[0], (tuple, list, torch.Size)) \
        else out_shape
    return 2 * math.prod(shape)  # FLOPs: one MAC per element


_NORM_OPS = {
    op: _per_output_element
    for op in (
        aten._native_batch_norm_legit_no_training,
        aten._native_batch_norm_legit,
        aten.native_batch_norm,
        aten.native_layer_norm,
        aten.native_group_norm,
    )
}


def count_macs(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one forward pass of `module` on `inputs`."""
    counter = FlopCounterMode(display=False, custom_mapping=_NORM_OPS)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*inputs)
    return counter.get_total_flops() // 2


class _NodeMacs(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.macs: dict[str, int] = {}

    def run_node(self, n: fx.Node):
        counter = FlopCounterMode(display=False, custom_mapping=_NORM_OPS)
        with counter:
            out = super().run_node(n)
        self.macs[n.name] = counter.get_total_flops() // 2
        return out


def node_macs(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, int]:
    """MACs of every node of a traced model for input `x` (batch 1 gives per-image MACs)."""
    interp = _NodeMacs(gm)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        interp.run(x)
    return interp.macs
