"""FLOP counting: ``FlopCounterMode`` formulas for the CPU attention kernels it does not know."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count


# FlopCounterMode has formulas for the CUDA attention kernels only; these are the CPU ones.
def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _native_mha_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path (open_clip's tower): in/out projections + attention."""
    batch, length, width = query
    source = key[1]
    return 2 * batch * width * width * (2 * length + 2 * source) + 4 * batch * length * source * width


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}
