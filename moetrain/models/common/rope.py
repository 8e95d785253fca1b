"""Routes megatron-core's rotary embedding through the kernel table.

megatron-core's SelfAttention calls ``apply_rotary_pos_emb`` (imported into
``megatron.core.transformer.attention``). For the plain case moetrain uses — rotate-half RoPE on
[s, b, heads, head_dim], no packed sequences, no mscale — the kernel table's ``rotary`` computes
the same thing (npu_rotary_mul on Ascend); every other case goes to the upstream function.

The replacement is the ``rotary-kernel`` entry of moetrain/megatron_patches.py's ``PATCHES`` (with
the upstream signature it mirrors); this module only installs it.
"""

from __future__ import annotations

from moetrain import megatron_patches


def install_rotary_kernel() -> None:
    megatron_patches.apply("rotary-kernel")  # process-wide, once
