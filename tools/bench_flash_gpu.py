"""Tune the GPU (Triton) flash-attention tiles: sweep FlashBlockSizes' gpu_* fields on a GPU and
time each against cuDNN, bf16, causal.

    python tools/bench_flash_gpu.py [--sizes 4x2048x16x128,1x8192x16x128] [--budget_s 300]
                                    [--runs 10] [--out sweep.jsonl] [--smoke]

Why: the Triton kernels' tiles and launch parameters (warps, pipeline stages) decide their speed,
and no default is right without a measurement. Two sweeps, each over every size (B x L x H x D):
  1. forward: (gpu_block_q, gpu_block_kv, gpu_num_warps, gpu_num_stages), the forward alone;
  2. backward: (gpu_block_q_bwd, gpu_block_kv_bwd, gpu_num_warps_bwd, gpu_num_stages_bwd), the
     forward + backward with the best forward fixed.
A configuration's score is the geometric mean over the sizes of its time over cuDNN's (below 1:
faster than cuDNN); one that fails to compile (e.g. out of shared memory) is recorded with its
error. Then the best configuration, the current defaults and cuDNN are timed side by side
(forward + backward), and the best is checked against cuDNN's outputs and dq. Each timing: a
warm-up (the compile), then the median of --runs calls. No configuration starts after
--budget_s; the sweeps list likely configurations first.

Every measurement goes to --out as one JSON line as it is made (partial results survive a
timeout); stdout ends with ONE JSON line: the best FlashBlockSizes fields and the final table.
--smoke: tiny sizes, two configurations per sweep, kernels interpreted on the CPU (checks this
script where no GPU is; its times mean nothing).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # device_check's timer

# Likely-good first: a budget cut keeps the front of each list.
FORWARD_TILES = [(128, 64), (64, 64), (128, 32), (64, 32), (128, 128), (64, 128)]
BACKWARD_TILES = [(64, 64), (32, 64), (64, 32), (32, 128), (128, 32), (128, 64), (64, 128),
                  (32, 32)]
WARPS = (4, 8)
STAGES = (2, 3)


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="4x2048x16x128,1x8192x16x128",
                 help="comma-separated BxLxHxD (bf16, causal, no GQA)")
  p.add_argument("--budget_s", type=float, default=300.0,
                 help="start no configuration after this many seconds")
  p.add_argument("--runs", type=int, default=10, help="timed calls per measurement")
  p.add_argument("--out", default="", help="append every measurement here as a JSON line")
  p.add_argument("--smoke", action="store_true", help="tiny sizes, interpreted, on the CPU")
  a = p.parse_args(argv)
  try:
    a.sizes = [tuple(int(x) for x in s.lower().split("x")) for s in a.sizes.split(",") if s]
  except ValueError:
    p.error(f"--sizes: expected BxLxHxD items, got {a.sizes!r}")
  if not a.sizes or any(len(s) != 4 for s in a.sizes):
    p.error(f"--sizes: expected BxLxHxD items, got {a.sizes!r}")
  if a.smoke:
    a.sizes = [(1, 128, 2, 32)]
  return a


def _log(*args):
  print("bench_flash_gpu:", *args, file=sys.stderr, flush=True)


def _median_ms(fn, runs):
  """Median ms of fn() after one warm-up (the compile): device_check.py's timer."""
  import jax
  from device_check import _median_s
  return _median_s(lambda: jax.block_until_ready(fn()), runs, warmup=1) * 1e3


def _geomean(xs):
  return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main(argv=None):
  a = _args(argv)
  if a.smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import jax.numpy as jnp
  from unimodal_jax.kernels.flash_attention import FlashBlockSizes, flash_attention

  start = time.perf_counter()
  out = open(a.out, "a") if a.out else None
  ref_impl = "xla" if a.smoke else "cudnn"
  _log({"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "sizes": a.sizes})

  def record(entry):
    _log(entry)
    if out:
      out.write(json.dumps(entry) + "\n")
      out.flush()

  inputs = {}
  for size in a.sizes:
    keys = jax.random.split(jax.random.key(0), 4)
    inputs[size] = tuple(jax.random.normal(k, size, jnp.bfloat16) for k in keys)

  def ours(sizes):
    return lambda q, k, v: flash_attention(q, k, v, causal=True, impl="pallas",
                                           interpret=a.smoke, platform="gpu", block_sizes=sizes)

  def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation=ref_impl, is_causal=True)

  def timed(attend, size, backward):
    q, k, v, do = inputs[size]
    if backward:
      def run(q, k, v):
        o, vjp = jax.vjp(attend, q, k, v)
        return (o,) + vjp(do)
    else:
      run = attend
    step = jax.jit(run)
    return _median_ms(lambda: step(q, k, v), a.runs)

  ref_ms = {(size, bwd): timed(reference, size, bwd) for size in a.sizes for bwd in (False, True)}
  record({"config": ref_impl, "ms": {f"{'x'.join(map(str, s))}{'_fwd_bwd' if b else '_fwd'}": round(
      t, 4) for (s, b), t in ref_ms.items()}})

  def sweep(phase, candidates, make_sizes, backward):
    best, best_score = None, math.inf
    for fields in candidates:
      if time.perf_counter() - start > a.budget_s:
        _log(f"{phase}: budget of {a.budget_s:.0f}s reached; the rest of the sweep skipped")
        break
      entry = {"phase": phase, "fields": fields}
      try:
        sizes = make_sizes(fields)
        ratios = []
        for size in a.sizes:
          ms = timed(ours(sizes), size, backward)
          entry[f"{'x'.join(map(str, size))}_ms"] = round(ms, 4)
          ratios.append(ms / ref_ms[(size, backward)])
        entry["time_over_reference"] = round(_geomean(ratios), 4)
        if entry["time_over_reference"] < best_score:
          best, best_score = fields, entry["time_over_reference"]
      except Exception as e:  # a configuration Triton cannot build: keep sweeping
        entry["error"] = f"{type(e).__name__}: {str(e)[:200]}"
      record(entry)
    return best

  def fwd_fields(tile, warps, stages):
    return dict(gpu_block_q=tile[0], gpu_block_kv=tile[1], gpu_num_warps=warps,
                gpu_num_stages=stages)

  def bwd_fields(tile, warps, stages):
    return dict(gpu_block_q_bwd=tile[0], gpu_block_kv_bwd=tile[1], gpu_num_warps_bwd=warps,
                gpu_num_stages_bwd=stages)

  def grid(tiles, make):
    combos = list(itertools.product(tiles, WARPS, STAGES))
    return [make(*c) for c in (combos[:2] if a.smoke else combos)]

  best_fwd = sweep("forward", grid(FORWARD_TILES, fwd_fields), lambda f: FlashBlockSizes(**f),
                   backward=False) or {}
  best_bwd = sweep("backward", grid(BACKWARD_TILES, bwd_fields),
                   lambda f: FlashBlockSizes(**best_fwd, **f), backward=True) or {}
  best = FlashBlockSizes(**best_fwd, **best_bwd)
  default = FlashBlockSizes()

  final = []
  for size in a.sizes:
    row = {"size": "x".join(map(str, size)), f"{ref_impl}_ms": round(ref_ms[(size, True)], 4)}
    for name, sizes in (("best", best), ("default", default)):
      try:
        row[f"{name}_ms"] = round(timed(ours(sizes), size, True), 4)
        row[f"{name}_over_{ref_impl}"] = round(row[f"{name}_ms"] / row[f"{ref_impl}_ms"], 3)
      except Exception as e:
        row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    q, k, v, do = inputs[size]

    def fwd_bwd(attend):
      o, vjp = jax.vjp(attend, q, k, v)
      return (o,) + vjp(do)
    try:
      mine, want = jax.jit(lambda: fwd_bwd(ours(best)))(), jax.jit(lambda: fwd_bwd(reference))()
      diff = lambda x, y: float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
      row["max_abs_diff_out"], row["max_abs_diff_dq"] = diff(mine[0], want[0]), diff(mine[1],
                                                                                    want[1])
    except Exception as e:
      row["check_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    record({"final": row})
    final.append(row)
  changed = {f: getattr(best, f) for f in best.__dataclass_fields__ if f.startswith("gpu_")}
  result = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
            "best": changed, "final": final, "wall_s": round(time.perf_counter() - start, 1)}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
