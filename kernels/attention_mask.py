"""The project's attention mask: causal in slot order, within one packed segment. The attention
dispatch (unimodal_jax/models/attention.py) and the kernels in this folder share it."""
from __future__ import annotations

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
