"""The one attention call every model goes through.

Layout [batch, length, heads, head_dim]; grouped-query heads (key/value heads divide query heads);
packed sequences by segment ids (0 marks padding); an optional query offset for KV-cache decoding.

Dispatch (`impl`): 'xla' is jax.nn.dot_product_attention with an explicit mask (the reference);
'pallas' is the fused kernel in kernels/flash_attention.py (on TPU/GPU; in interpret mode on a
CPU; for TPU descriptions when compiling ahead of time); 'blockwise' is
models/blockwise_attention.py (plain XLA ops that skip the masked half of the causal square, with
a flash-style backward); 'cpu_fused' is the C++ kernel in kernels/cpu_attention.py (float32 on
the CPU, head_dim 16-128, built on first use). 'auto' picks, for training-shaped calls (no cache
offset), the Pallas kernel on TPU/GPU, 'cpu_fused' on a CPU where it builds and takes the shapes,
else 'blockwise', and 'xla' otherwise. The decoder's KV-cache decoding does not
come through here: it calls `cached_attention` (below) on its heads-major cache. Inside
`sharding.activation_sharding(mesh)` the kernels (Pallas and CPU) run under jax.shard_map over
the mesh's batch (and, when they divide, head) axes, since Mosaic kernels and custom calls cannot
be partitioned automatically.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unimodal_jax.kernels import cpu_attention
from unimodal_jax.kernels.dispatch import shard_attention
from unimodal_jax.kernels.flash_attention import flash_attention, flash_attention_sharded
from unimodal_jax.kernels.attention_mask import attention_mask
from unimodal_jax.models.blockwise_attention import blockwise_causal_attention

IMPLS = ("auto", "xla", "pallas", "blockwise", "cpu_fused")
BATCH_AXES = ("data", "fsdp")  # as sharding.BATCH_AXES (which imports the models)
HEAD_AXIS = "tensor"


def _context_mesh():
  """The mesh of `jax.set_mesh` (abstract: this runs while tracing), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def _platform(mesh) -> str:
  """Where the program will run: the mesh's devices (TPU descriptions when compiling ahead of
  time from a CPU host), else the default backend."""
  device = getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def target_platform() -> str:
  """The platform the program being traced will run on ('cpu', 'tpu', 'gpu'): that of the
  `jax.set_mesh` mesh when there is one, else the default backend."""
  return _platform(_context_mesh())


def _over_mesh(fn, q, k, v, segment_ids, mesh):
  """fn(q, k, v, segment_ids=...) per shard: batch over the mesh's batch axes, heads over
  'tensor' when it divides the key/value heads."""
  if mesh is None or mesh.size == 1:
    return fn(q, k, v, segment_ids=segment_ids)
  batch_axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  tensor = mesh.shape.get(HEAD_AXIS, 1)
  head_axes = HEAD_AXIS if tensor > 1 and k.shape[2] % tensor == 0 else None
  return shard_attention(fn, q, k, v, mesh, batch_axes=batch_axes, head_axes=head_axes,
                         segment_ids=segment_ids)


def _fused(q, k, v, segment_ids, mesh):
  platform = _platform(mesh)
  if platform not in ("tpu", "gpu"):  # 'pallas' on a CPU: the TPU kernel in interpret mode
    return flash_attention(q, k, v, causal=True, segment_ids=segment_ids, impl="pallas",
                           interpret=True)
  kernel = functools.partial(flash_attention, causal=True, impl="pallas", platform=platform)
  return _over_mesh(kernel, q, k, v, segment_ids, mesh)


def _cpu_fused_applies(q, k, mesh) -> bool:
  return (_platform(mesh) == "cpu" and cpu_attention.supports(q.shape, k.shape)
          and cpu_attention.available())


def dot_product_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_offset=0, impl="auto"):
  """Causal, segment-masked softmax(q k^T / sqrt(d)) v.

  q: [B, Tq, N, D]; k, v: [B, Tk, K, D] with N % K == 0; segment ids int32 [B, Tq] / [B, Tk].
  Softmax runs in float32 whatever the input dtype.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} not a multiple of key/value heads {k.shape[2]}")
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r}; expected one of {IMPLS}")
  training_shaped = (isinstance(q_offset, int) and q_offset == 0 and q.shape[1] == k.shape[1]
                     and q_segment_ids is kv_segment_ids)
  mesh = _context_mesh()
  if impl == "pallas" and not training_shaped:
    raise ValueError("attention impl 'pallas' covers self-attention without a KV-cache offset; "
                     "use 'auto' to fall back to XLA for decoding")
  if impl == "pallas" or (impl == "auto" and training_shaped
                          and _platform(mesh) in ("tpu", "gpu")):
    return _fused(q, k, v, q_segment_ids, mesh)
  if impl == "cpu_fused" or (impl == "auto" and training_shaped
                             and _cpu_fused_applies(q, k, mesh)):
    if not training_shaped:
      raise ValueError("attention impl 'cpu_fused' covers self-attention without a KV-cache "
                       "offset; use 'auto' to fall back to XLA for decoding")
    return _over_mesh(cpu_attention.cpu_causal_attention, q, k, v, q_segment_ids, mesh)
  if impl == "blockwise" or (impl == "auto" and training_shaped):
    if not training_shaped:
      raise ValueError("attention impl 'blockwise' covers self-attention without a KV-cache "
                       "offset; use 'auto' to fall back to XLA for decoding")
    return blockwise_causal_attention(q, k, v, q_segment_ids)
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)
  # jax.nn.dot_product_attention handles GQA and upcasts the logits to float32 for the softmax.
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def cached_attention(q, cache_k, cache_v, *, q_segment_ids, kv_segment_ids, q_offset):
  """Attention of new queries against a KV cache kept heads-major.

  q: [B, T, N, D]; cache_k, cache_v: [B, K, S, D] (K key/value heads dividing N);
  kv_segment_ids [B, S] (0: an empty or padding slot); query i sits at slot q_offset + i.
  The cache is heads-major because decoding reads all of it every step: in that layout both
  products contract without transposing the cache (in [B, S, K, D], XLA's CPU backend copied
  every layer's whole cache, transposed, on every step). Softmax in float32.
  """
  b, t, n, d = q.shape
  kv = cache_k.shape[1]
  qg = q.reshape(b, t, kv, n // kv, d)
  scores = jnp.einsum("btkgd,bksd->bkgts", qg, cache_k.astype(q.dtype),
                      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(d))
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)[:, :, None]  # [B,1,1,T,S]
  probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
  out = jnp.einsum("bkgts,bksd->btkgd", probs.astype(q.dtype), cache_v.astype(q.dtype),
                   preferred_element_type=jnp.float32)
  return out.reshape(b, t, n, d).astype(q.dtype)


def full_attention(q, k, v, *, impl="auto", upcast=False):
  """Unmasked softmax(q k^T / sqrt(d)) v: every query sees every key (a U-Net's self-attention
  over pixels, cross-attention to a condition sequence, a VAE's mid-block attention).

  q: [B, Lq, N, D]; k, v: [B, Lk, N, D] (Lk may differ from Lq). impl: 'auto' (the Pallas kernel,
  non-causal, on TPU/GPU; XLA elsewhere), 'xla', 'pallas' (interpret mode on a CPU). `upcast`
  computes the logits from float32 q and k (SD 2.x's upcast_attention); the softmax is float32
  either way.
  """
  if impl not in ("auto", "xla", "pallas"):
    raise ValueError(f"full attention impl {impl!r}; expected 'auto', 'xla' or 'pallas'")
  mesh = _context_mesh()
  platform = _platform(mesh)
  if impl == "pallas" or (impl == "auto" and platform in ("tpu", "gpu")):
    kwargs = dict(causal=False, impl="pallas")
    if platform not in ("tpu", "gpu"):
      return flash_attention(q, k, v, interpret=True, **kwargs)
    if mesh is None:
      return flash_attention(q, k, v, platform=platform, **kwargs)
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return flash_attention_sharded(q, k, v, mesh, batch_axes=batch_axes, platform=platform,
                                   **kwargs)
  d = q.shape[-1]
  logits_dtype = jnp.float32 if upcast else q.dtype
  scores = jnp.einsum("bqnd,bknd->bnqk", q.astype(logits_dtype), k.astype(logits_dtype),
                      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(d))
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v, preferred_element_type=jnp.float32
                    ).astype(q.dtype)
