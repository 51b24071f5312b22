"""Which implementation a kernel call runs: the one dispatch rule every kernel in this folder uses.

'auto' runs the Pallas kernel on TPU/GPU and the XLA reference elsewhere; 'xla' always the
reference; 'pallas' the kernel, which on a CPU needs interpret mode (the TPU kernel simulated).
"""
from __future__ import annotations

import jax

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
