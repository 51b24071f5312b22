"""The one attention call every model goes through.

Layout [batch, length, heads, head_dim]; grouped-query heads (key/value heads divide query heads);
packed sequences by segment ids (0 marks padding); an optional query offset for KV-cache decoding.
The kernels issue plugs its fused Pallas attention in behind `impl`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(q_segment_ids, kv_segment_ids, q_offset=0):
  """Boolean [batch, 1, q_len, kv_len]: causal in slot order and within the same segment.

  Query i sits at slot `q_offset + i` of the key sequence (q_offset > 0 when decoding against a
  cache). Padding (segment 0) attends to padding only, so no row is empty and softmax never sees
  an all-masked row.
  """
  q_len, kv_len = q_segment_ids.shape[1], kv_segment_ids.shape[1]
  q_slot = q_offset + jnp.arange(q_len, dtype=jnp.int32)
  kv_slot = jnp.arange(kv_len, dtype=jnp.int32)
  causal = kv_slot[None, :] <= q_slot[:, None]
  same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  return (causal[None] & same_segment)[:, None]


def dot_product_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_offset=0, impl="auto"):
  """Causal, segment-masked softmax(q k^T / sqrt(d)) v.

  q: [B, Tq, N, D]; k, v: [B, Tk, K, D] with N % K == 0; segment ids int32 [B, Tq] / [B, Tk].
  Softmax runs in float32 whatever the input dtype.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} not a multiple of key/value heads {k.shape[2]}")
  if impl not in ("auto", "xla"):
    raise ValueError(f"attention impl {impl!r} is not available; expected 'auto' or 'xla'")
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)
  # jax.nn.dot_product_attention handles GQA and upcasts the logits to float32 for the softmax.
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
