"""Roofline MFU of an experiment's train step on a TPU topology, from ahead-of-time compiles.

    python tools/roofline.py --config=experiments/illume/stage2.py --topology=v5p-256

Why two small compiles instead of the real one: with scanned layers XLA's cost analysis counts
the loop body once, so the full program's FLOP and byte counts are too low. This compiles the
step with the LLM unscanned at 1 and at 2 layers (everything else as configured), takes the
difference as one layer's cost and extrapolates linearly to the configured depth:
cost(L) = cost(1) + (L - 1) * (cost(2) - cost(1)), per chip. Then the roofline step time is
max(FLOPs / bf16 peak, bytes / HBM bandwidth) per chip, and the roofline MFU is the analytic
model FLOPs (the MFU convention, aot.report's flops_per_step) over peak times that time. It is
an upper bound: communication that does not overlap, and kernels below the roofline, only lower
it. Parts outside the LLM that are themselves scanned (a ViT encoder) stay counted once.

Prints a progress line per compile, then one JSON line: per-chip FLOPs and bytes at 1, 2 and the
full depth, the roofline times and MFU, and the config's analytic FLOPs.
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-256", "TPU topology, as tools/aot_compile.py")


def _llm_section(cfg):
  """The config section holding the decoder's layer count (model.llm for ILLUME)."""
  return cfg.model.llm if "llm" in cfg.model else cfg.model


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/illume/stage2.py")
  if "train" not in _CONFIG.value or "optimizer" not in _CONFIG.value:
    raise app.UsageError("the config needs train and optimizer sections (a train step config)")
  from unimodal_jax import aot
  from unimodal_jax.models import build

  full = _CONFIG.value
  depth = int(_llm_section(full).num_layers)
  generation, _ = aot.topology_devices(_TOPOLOGY.value)
  chip = aot.CHIPS[generation]
  per_chip = {}
  for layers in (1, 2):
    cfg = full.copy_and_resolve_references()
    _llm_section(cfg).num_layers = layers
    _llm_section(cfg).scan_layers = False
    print(f"compiling the train step with {layers} unscanned LLM layer(s) for {_TOPOLOGY.value} "
          f"...", file=sys.stderr, flush=True)
    r = aot.compile_train_step_for_topology(cfg, _TOPOLOGY.value)
    per_chip[layers] = (r["compiler_flops_per_step"] / r["num_chips"],
                        r["compiler_bytes_per_step"] / r["num_chips"], r["num_chips"],
                        r["compile_s"])
  (f1, b1, chips, _), (f2, b2, _, _) = per_chip[1], per_chip[2]
  flops = f1 + (depth - 1) * (f2 - f1)
  bytes_ = b1 + (depth - 1) * (b2 - b1)
  model_config = build.config_from_dict(full.model.to_dict())
  analytic = model_config.flops_per_token(full.seq_len) * full.global_batch * full.seq_len
  result = {
      "topology": _TOPOLOGY.value, "num_chips": chips, "layers": depth,
      "compiler_flops_per_chip": {"1": f1, "2": f2, str(depth): flops},
      "compiler_bytes_per_chip": {"1": b1, "2": b2, str(depth): bytes_},
      "analytic_flops_per_step": analytic,
      "compiler_vs_analytic_flops": flops * chips / analytic,
      "peak_bf16_flops_per_chip": chip.bf16_flops, "hbm_bytes_per_s_per_chip": chip.hbm_bytes_per_s,
      **aot.roofline(flops, bytes_, analytic / chips, chip),
      "compile_s": {"1": per_chip[1][3], "2": per_chip[2][3]},
  }
  print(f"roofline: compute {result['roofline_compute_s'] * 1e3:.1f} ms, memory "
        f"{result['roofline_memory_s'] * 1e3:.1f} ms per step -> MFU at most "
        f"{result['roofline_mfu']:.1%}", file=sys.stderr)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
