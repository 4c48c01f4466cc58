"""Counting the floating-point operations of a training step with torch's ``FlopCounterMode``.

torch counts matrix multiplications, convolutions and attention from the shapes of the operands (2 FLOPs
per multiply-add), which makes a count a property of the model and the batch, not of the machine: the
same on an AMX VM, an AVX2 VM or a GPU. Element-wise work (norms, activations, the optimizer) is left
out, as in every published FLOP count. On a CPU, fused attention runs a kernel the counter (torch 2.14)
does not know; :func:`count_cpu_attention` teaches it torch's own formula for that kernel, so a CPU
count equals a GPU count.
"""

from __future__ import annotations

import torch


def count_cpu_attention() -> None:
    """Register torch's SDPA FLOP formulas for the CPU flash-attention kernel (once; a no-op afterwards)."""
    from torch.utils.flop_counter import flop_registry, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_registry:
        return

    @register_flop_formula(forward)
    def _forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    @register_flop_formula(backward)
    def _backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> torch.utils.flop_counter.FlopCounterMode:
    """A ``FlopCounterMode`` (no printed table) that also counts the CPU attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    return FlopCounterMode(display=False)
