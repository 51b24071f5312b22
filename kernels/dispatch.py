"""Which implementation a kernel call runs: the one dispatch rule every kernel in this folder uses.

'auto' runs the Pallas kernel on TPU/GPU and the XLA reference elsewhere; 'xla' always the
reference; 'pallas' the kernel, which on a CPU needs interpret mode (the TPU kernel simulated).
"""
from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

IMPLS = ("auto", "xla", "pallas")


def resolve_impl(impl: str, platform: str | None, interpret) -> str:
  """-> 'xla' | 'tpu' | 'gpu': the code path. `platform` defaults to the default backend."""
  if impl not in IMPLS:
    raise ValueError(f"impl {impl!r}: expected one of {IMPLS}")
  platform = platform or jax.default_backend()
  platform = "gpu" if platform in ("cuda", "rocm") else platform
  if impl == "auto":
    return platform if platform in ("tpu", "gpu") else "xla"
  if impl == "xla":
    return "xla"
  if platform in ("tpu", "gpu"):
    return platform
  if interpret:  # CPU: simulate the TPU kernel
    return "tpu"
  raise ValueError("impl='pallas' on CPU needs interpret=True (or pltpu.InterpretParams())")


def shard_attention(fn, q, k, v, mesh, *, batch_axes, head_axes=None, segment_ids=None):
  """fn(q, k, v[, segment_ids=...]) per shard inside jax.shard_map: batch over `batch_axes`,
  heads over `head_axes` (query and key/value heads alike, so a shard keeps whole GQA groups).
  For kernels XLA cannot partition itself: Mosaic kernels and custom calls."""
  qkv = P(batch_axes, None, head_axes, None)
  if segment_ids is None:
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv), out_specs=qkv,
                         check_vma=False)(q, k, v)
  per_shard = lambda q, k, v, s: fn(q, k, v, segment_ids=s)
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch_axes, None)),
                       out_specs=qkv, check_vma=False)(q, k, v, segment_ids)
