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

from unimodal_jax.kernels.vq_lookup import VQBlockSizes, vq_lookup, vq_lookup_reference  # noqa: E402

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


def compiled_memory(n, k, d, block_sizes):
  """XLA temp bytes of the naive and chunked lookups, compiled for this CPU without running
  (so sizes far beyond this machine's RAM can be measured)."""
  x = jax.ShapeDtypeStruct((n, d), jnp.float32)
  c = jax.ShapeDtypeStruct((k, d), jnp.float32)
  naive = jax.jit(lambda a, b: vq_lookup_reference(a, b)).lower(x, c).compile()
  chunked = jax.jit(lambda a, b: vq_lookup(a, b, impl="xla", block_sizes=block_sizes)
                    ).lower(x, c).compile()
  return {"n": n, "k": k, "d": d,
          "naive_temp_mib": naive.memory_analysis().temp_size_in_bytes / MiB,
          "chunked_temp_mib": chunked.memory_analysis().temp_size_in_bytes / MiB}


# Vendor figures (DESIGN.md): bf16 peak FLOP/s and HBM bytes/s per chip.
TPU_PEAK = {"v5e": (197e12, 0.82e12), "v5p": (459e12, 2.76e12), "v6e": (918e12, 1.64e12)}


def tpu_roofline(topology, n, k, d):
  """Compile the Mosaic lookup for a TPU topology (tokens sharded over all chips) and compare
  the compiler's FLOP and byte counts per chip with the chip's roofline."""
  from unimodal_jax import aot, sharding
  from unimodal_jax.kernels.vq_lookup import vq_lookup_sharded
  gen, devices = aot.topology_devices(topology)
  mesh = sharding.make_mesh({"data": -1}, devices)
  x = jax.ShapeDtypeStruct((n, d), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(("data",), None)))
  c = jax.ShapeDtypeStruct((k, d), jnp.bfloat16, sharding=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  compiled = jax.jit(lambda a, b: vq_lookup_sharded(a, b, mesh, "data")).lower(x, c).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  chips = len(devices)
  peak, bandwidth = TPU_PEAK[gen]
  model_flops = 2 * n * k * d / chips  # the distance matmul, per chip
  model_bytes = (n * d + k * d) * 2 / chips + k * d * 2 * (n / chips / 256 - 1 / chips)
  compiler_flops = float(cost.get("flops", 0.0))
  compiler_bytes = float(cost.get("bytes accessed", 0.0))
  flops = compiler_flops or model_flops
  bytes_ = compiler_bytes or model_bytes
  return {"topology": topology, "chips": chips, "n": n, "k": k, "d": d,
          "compiler_flops_per_chip": compiler_flops, "compiler_bytes_per_chip": compiler_bytes,
          "matmul_flops_per_chip": model_flops,
          "roofline_compute_s": flops / peak, "roofline_memory_s": bytes_ / bandwidth,
          "arithmetic_intensity": flops / max(bytes_, 1.0),
          "ridge_point": peak / bandwidth,
          "temp_mib": compiled.memory_analysis().temp_size_in_bytes / MiB}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="2048x4096x64,8192x16384x32,16384x16384x8",
                      help="comma-separated NxKxD")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--chunk_tokens", type=int, default=VQBlockSizes.chunk_tokens)
  parser.add_argument("--chunk_codes", type=int, default=VQBlockSizes.chunk_codes)
  parser.add_argument("--memory_size", default="65536x16384x256",
                      help="NxKxD whose compiled temp memory is compared (compiled, not run)")
  parser.add_argument("--tpu", default="v5e:2x2,v5p-8",
                      help="TPU topologies to compile the Mosaic kernel for ('' to skip)")
  parser.add_argument("--tpu_size", default="262144x16384x256",
                      help="NxKxD of the TPU roofline check (ILLUME: 1024 images x 256 tokens)")
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
  memory = compiled_memory(*_parse_sizes(args.memory_size)[0], block_sizes)
  print(f"compiled temp memory, N={memory['n']} K={memory['k']} D={memory['d']}: naive "
        f"{memory['naive_temp_mib']:,.0f} MiB, chunked {memory['chunked_temp_mib']:,.1f} MiB")
  roofline = []
  for topology in [t for t in args.tpu.split(",") if t]:
    try:
      r = tpu_roofline(topology, *_parse_sizes(args.tpu_size)[0])
    except RuntimeError as e:  # no libtpu
      print(f"{topology}: skipped ({e})")
      continue
    roofline.append(r)
    print(f"{topology}: per chip {r['compiler_flops_per_chip']:.3g} compiler FLOPs "
          f"({r['matmul_flops_per_chip']:.3g} matmul), {r['compiler_bytes_per_chip']:.3g} bytes; "
          f"roofline {1e3 * max(r['roofline_compute_s'], r['roofline_memory_s']):.2f} ms "
          f"(compute {1e3 * r['roofline_compute_s']:.2f}, memory "
          f"{1e3 * r['roofline_memory_s']:.2f}); intensity {r['arithmetic_intensity']:.0f} vs "
          f"ridge {r['ridge_point']:.0f} FLOP/byte; temp {r['temp_mib']:.1f} MiB", flush=True)
  print(json.dumps({
      "bench": "vq_lookup_cpu",
      "compiled_memory": memory,
      "tpu_roofline": roofline,
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
