"""Causal attention, forward and backward, on this CPU: the fused kernel (kernels/cpu_attention.cc)
against the XLA paths it replaces and PyTorch's scaled_dot_product_attention.

    python tools/bench_cpu_attention.py [--shapes 8x256x8x8x32,32x160x4x4x32] [--steps 5]
                                        [--repeats 7]

Each shape is B x T x heads x kv_heads x head_dim, float32, one packed segment per row. The
defaults are the issue-8 train step's layer (tools/bench_train.py) and the tiny ILLUME job's
stage 2 (32 rows of 160 tokens). Timed: the loss sum(out * w) and its gradients in q, k and v,
jitted; the sides alternate in each round and the medians are compared, so machine noise hits
all alike. Before timing, every JAX side is checked against the reference ('xla'). Prints a table
of milliseconds per call, then one JSON line (last).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

JAX_IMPLS = ("cpu_fused", "blockwise", "xla")


def _parse_shapes(text):
  shapes = []
  for item in text.split(","):
    parts = item.lower().split("x")
    if len(parts) != 5 or not all(p.isdigit() for p in parts):
      raise SystemExit(f"--shapes: {item!r} is not B x T x heads x kv_heads x head_dim")
    shapes.append(tuple(int(p) for p in parts))
  return shapes


def _jax_side(impl, seg):
  from unimodal_jax.models import attention

  def loss(q, k, v, w):
    out = attention.dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                          impl=impl)
    return jnp.sum(out * w)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _torch_side(q, k, v, w):
  import torch
  group = q.shape[2] // k.shape[2]
  # SDPA's layout [B, heads, T, D]; key/value heads repeated for the group, as HF's LLaMA does.
  tq, tk, tv, tw = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous() for x in (q, k, v, w))
  tk, tv = (x.repeat_interleave(group, dim=1) for x in (tk, tv))
  for x in (tq, tk, tv):
    x.requires_grad_(True)

  def run():
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    (out * tw).sum().backward()
    for x in (tq, tk, tv):
      x.grad = None
  return run


def bench_shape(b, t, heads, kv_heads, d, steps, repeats):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, t, kv_heads, d)), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
  seg = jnp.ones((b, t), jnp.int32)
  want = _jax_side("xla", seg)(q, k, v, w)
  sides = {}
  for impl in JAX_IMPLS:
    fn = _jax_side(impl, seg)
    got = fn(q, k, v, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-3, atol=1e-3,
                                 err_msg=f"{impl} disagrees with the reference")
    sides[impl] = lambda fn=fn: jax.block_until_ready(fn(q, k, v, w))
  try:
    sides["torch_sdpa"] = _torch_side(q, k, v, w)
  except ImportError:  # torch is in the dev extra
    pass
  for run in sides.values():
    run()
  times = {name: [] for name in sides}
  for _ in range(repeats):
    for name, run in sides.items():
      start = time.perf_counter()
      for _ in range(steps):
        run()
      times[name].append((time.perf_counter() - start) / steps * 1e3)
  return {name: round(statistics.median(v), 2) for name, v in times.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--shapes", default="8x256x8x8x32,32x160x4x4x32",
                 help="comma-separated B x T x heads x kv_heads x head_dim")
  p.add_argument("--steps", type=int, default=5, help="calls per timed round")
  p.add_argument("--repeats", type=int, default=7, help="timed rounds per side")
  a = p.parse_args(argv)
  from unimodal_jax.kernels import cpu_attention
  if not cpu_attention.available():
    print("the fused CPU attention kernels do not build here; see the warning above",
          file=sys.stderr)
    return 1
  results = []
  for shape in _parse_shapes(a.shapes):
    ms = bench_shape(*shape, a.steps, a.repeats)
    row = {"shape": "x".join(map(str, shape)), "ms_fwd_bwd": ms,
           "speedup_vs_xla": round(ms["xla"] / ms["cpu_fused"], 2),
           "speedup_vs_blockwise": round(ms["blockwise"] / ms["cpu_fused"], 2)}
    if "torch_sdpa" in ms:
      row["speedup_vs_torch_sdpa"] = round(ms["torch_sdpa"] / ms["cpu_fused"], 2)
    results.append(row)
    print(f"{row['shape']:>18}  " + "  ".join(f"{k} {v:.2f} ms" for k, v in ms.items()),
          flush=True)
  print(json.dumps({"results": results}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
