"""Fused causal attention on the CPU: the C++ kernels of cpu_attention.cc as XLA FFI calls.

Same inputs and mask as `attention.dot_product_attention`'s training-shaped calls: q [B, T, N, D],
k and v [B, T, K, D] (K divides N), segment ids int32 [B, T] (0 marks padding, which attends to
padding), causal in slot order, scale 1/sqrt(D). Computed in float32 (other dtypes are cast in and
out); head_dim 16, 32, 64 or 128. Differentiable in q, k, v (the backward is a second kernel that
recomputes the probabilities from the saved log-sum-exp).

The library is compiled on first use with the host's C++ compiler (`$CXX`, else g++) for this
CPU (-march=native) into `$UNIMODAL_KERNEL_CACHE` (default ~/.cache/unimodal_jax/kernels), keyed
by the source, the flags, jaxlib's version and the CPU's feature flags, so a home directory
shared between different machines never loads another CPU's build. Where no compiler works,
`available()` is False (with one warning giving the compiler's error) and `attention.py` falls
back to the blockwise XLA path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

_SOURCE = Path(__file__).with_name("cpu_attention.cc")
_FLAGS = ("-O3", "-march=native", "-std=gnu++17", "-shared", "-fPIC", "-w")
_TARGETS = {"unimodal_cpu_attention_fwd": "UnimodalCpuAttentionForward",
            "unimodal_cpu_attention_bwd": "UnimodalCpuAttentionBackward"}
HEAD_DIMS = (16, 32, 64, 128)

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict = {}  # "ok": bool, "error": str


def _cpu_flags() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("flags", "Features")):
        return line
  except OSError:
    pass
  return platform.processor()


def library_path() -> Path:
  """Where this machine's build of the kernels lives (built or not)."""
  compiler = os.environ.get("CXX", "g++")
  key = hashlib.sha256("\0".join([
      _SOURCE.read_text(), compiler, *_FLAGS, jax.__version__, platform.machine(), _cpu_flags(),
  ]).encode()).hexdigest()[:16]
  root = Path(os.environ.get("UNIMODAL_KERNEL_CACHE",
                             Path.home() / ".cache" / "unimodal_jax" / "kernels"))
  return root / f"cpu_attention-{key}.so"


def _build(out: Path) -> None:
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set $CXX)")
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compile beside the target and rename: concurrent processes (test workers) never see half a file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def available() -> bool:
  """Whether the kernels are built (building them now if need be) and registered with XLA."""
  with _lock:
    if "ok" not in _loaded:
      try:
        path = library_path()
        if not path.exists():
          _log.info("building the fused CPU attention kernels into %s", path)
          _build(path)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in _TARGETS.items():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform="cpu")
        _loaded["ok"] = True
      except Exception as e:  # noqa: BLE001  (any failure means: use the XLA path)
        _loaded.update(ok=False, error=str(e))
        _log.warning("fused CPU attention unavailable, using the XLA path: %s", e)
    return _loaded["ok"]


def supports(q_shape, k_shape) -> bool:
  """Whether the kernels take these shapes (self-attention, head_dim 16/32/64/128, GQA)."""
  return (len(q_shape) == 4 and len(k_shape) == 4 and q_shape[:2] == k_shape[:2]
          and q_shape[3] == k_shape[3] and q_shape[3] in HEAD_DIMS and k_shape[2] > 0
          and q_shape[2] % k_shape[2] == 0)


def _forward(q, k, v, segment_ids):
  b, t, n, _ = q.shape
  call = jax.ffi.ffi_call("unimodal_cpu_attention_fwd",
                          (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                           jax.ShapeDtypeStruct((b, n, t), jnp.float32)),
                          vmap_method="sequential")
  return call(q, k, v, segment_ids)


@jax.custom_vjp
def _attend(q, k, v, segment_ids):
  return _forward(q, k, v, segment_ids)[0]


def _attend_fwd(q, k, v, segment_ids):
  out, lse = _forward(q, k, v, segment_ids)
  return out, (q, k, v, segment_ids, out, lse)


def _attend_bwd(residuals, d_out):
  q, k, v, segment_ids, out, lse = residuals
  call = jax.ffi.ffi_call("unimodal_cpu_attention_bwd",
                          (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                           jax.ShapeDtypeStruct(k.shape, jnp.float32),
                           jax.ShapeDtypeStruct(v.shape, jnp.float32)),
                          vmap_method="sequential")
  dq, dk, dv = call(q, k, v, segment_ids, out, lse, d_out.astype(jnp.float32))
  return dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def cpu_causal_attention(q, k, v, segment_ids):
  """softmax(q k^T / sqrt(d)) v, causal and within segments, by the fused CPU kernels; the
  result in q's dtype. Raises if the shapes are not `supports`ed or the kernels are not
  `available()`."""
  if not supports(q.shape, k.shape) or v.shape != k.shape:
    raise ValueError(f"fused CPU attention needs q [B, T, N, D], k and v [B, T, K, D] with K "
                     f"dividing N and D in {HEAD_DIMS}; got {q.shape}, {k.shape}, {v.shape}")
  if segment_ids.shape != q.shape[:2]:
    raise ValueError(f"segment_ids {segment_ids.shape}: expected {q.shape[:2]}")
  if not available():
    raise RuntimeError(f"fused CPU attention kernels unavailable: {_loaded.get('error')}")
  f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
  out = _attend(f32(q), f32(k), f32(v), segment_ids.astype(jnp.int32))
  return out.astype(q.dtype)
