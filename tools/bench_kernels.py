"""Benchmark vq_lookup's chunked XLA path against the naive N x K reference on this machine.

    python tools/bench_kernels.py [--sizes 2048x4096x64,8192x16384x32,16384x16384x8] [--repeats 3]
                                  [--chunk_tokens 1024 --chunk_codes 2048]

Why: the chunked path is the CPU default and the Pallas kernels' stand-in; it must not be slower
than the obvious form while holding one chunk x chunk tile instead of the N x K matrix. For each
size (N tokens x K codes x D dims, float32) both are jitted, warmed up, then timed alternately
in the same run (median of --repeats), and checked to agree. Memory: the analytic size of the
largest live intermediate, plus XLA's own temp-buffer figure from the compiled program. Prints
a table, then the results as one JSON line (last).

The Pallas kernels are not timed: on CPU they only run in interpret mode, which says nothing
about TPU or GPU speed.
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

from kernels.vq_lookup import VQBlockSizes, vq_lookup, vq_lookup_reference  # noqa: E402

MiB = 1024**2


def _parse_sizes(text):
  sizes = []
  for item in text.split(","):
    n, k, d = (int(v) for v in item.lower().split("x"))
    sizes.append((n, k, d))
  return sizes


def _median_time(fn, args, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_size(n, k, d, repeats, block_sizes, seed=0):
  kx, kc = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (n, d), jnp.float32)
  codebook = jax.random.normal(kc, (k, d), jnp.float32)
  naive = jax.jit(lambda a, b: vq_lookup_reference(a, b))
  chunked = jax.jit(lambda a, b: vq_lookup(a, b, impl="xla", block_sizes=block_sizes))
  temps = {}
  for name, fn in (("naive", naive), ("chunked", chunked)):
    mem = fn.lower(x, codebook).compile().memory_analysis()
    temps[name] = int(mem.temp_size_in_bytes) if mem is not None else None
  # Warm up, and check agreement (indices may differ only on near-ties).
  (ni, nd), (ci, cd) = jax.block_until_ready(naive(x, codebook)), chunked(x, codebook)
  agree = float(np.mean(np.asarray(ni) == np.asarray(ci)))
  max_dist_diff = float(jnp.max(jnp.abs(nd - cd)))
  # Alternate the two so drift from other work on the machine hits both alike.
  t_naive, t_chunked = [], []
  for _ in range(repeats):
    t_naive.append(_median_time(naive, (x, codebook), 1))
    t_chunked.append(_median_time(chunked, (x, codebook), 1))
  med_naive, med_chunked = statistics.median(t_naive), statistics.median(t_chunked)
  tn = min(block_sizes.chunk_tokens, n)
  tk = min(block_sizes.chunk_codes, k)
  return {
      "n": n, "k": k, "d": d,
      "naive_s": round(med_naive, 4),
      "chunked_s": round(med_chunked, 4),
      "speedup": round(med_naive / med_chunked, 3),
      "naive_matrix_mib": round(n * k * 4 / MiB, 1),
      "chunked_tile_mib": round(tn * tk * 4 / MiB, 1),
      "naive_xla_temp_mib": None if temps["naive"] is None else round(temps["naive"] / MiB, 1),
      "chunked_xla_temp_mib": (None if temps["chunked"] is None
                               else round(temps["chunked"] / MiB, 1)),
      "index_agreement": agree,
      "max_distance_diff": max_dist_diff,
      "gflop": round(2 * n * k * d / 1e9, 2),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="2048x4096x64,8192x16384x32,16384x16384x8",
                      help="comma-separated NxKxD")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--chunk_tokens", type=int, default=VQBlockSizes.chunk_tokens)
  parser.add_argument("--chunk_codes", type=int, default=VQBlockSizes.chunk_codes)
  args = parser.parse_args(argv)
  block_sizes = VQBlockSizes(chunk_tokens=args.chunk_tokens, chunk_codes=args.chunk_codes)
  results = []
  print(f"{'N':>7} {'K':>6} {'D':>4} {'naive s':>9} {'chunked s':>9} {'speedup':>7} "
        f"{'naive MiB':>9} {'tile MiB':>8} {'XLA temp naive/chunked MiB':>27}")
  for n, k, d in _parse_sizes(args.sizes):
    r = bench_size(n, k, d, args.repeats, block_sizes)
    results.append(r)
    print(f"{n:>7} {k:>6} {d:>4} {r['naive_s']:>9.4f} {r['chunked_s']:>9.4f} "
          f"{r['speedup']:>7.2f} {r['naive_matrix_mib']:>9.1f} {r['chunked_tile_mib']:>8.1f} "
          f"{str(r['naive_xla_temp_mib']) + ' / ' + str(r['chunked_xla_temp_mib']):>27}",
          flush=True)
  print(json.dumps({
      "bench": "vq_lookup_cpu",
      "device": jax.devices()[0].device_kind,
      "cpu_count": os.cpu_count(),
      "chunk_tokens": args.chunk_tokens,
      "chunk_codes": args.chunk_codes,
      "repeats": args.repeats,
      "results": results,
  }))
  return 0


if __name__ == "__main__":
  sys.exit(main())
