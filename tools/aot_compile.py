"""AOT-compile a config's train step (or forward+backward) for a TPU topology on this CPU machine.

    python tools/aot_compile.py --config=experiments/illume/vicuna7b.py --topology=v5p-256
    python tools/aot_compile.py --config=experiments/dreamllm/sd21_base.py --topology=v5p-256
    python tools/aot_compile.py --config=experiments/tiny/lm.py --topology=v5e:2x2
        --config.global_batch=16 --config.mesh.fsdp=2 --config.mesh.data=-1   (one line)

Needs the `libtpu` wheel (in requirements.txt), no TPU. Topologies: slice names v5p-N, v4-N (N
counts TensorCores, 2 per chip), v5e-N, v6e-N (N chips), or explicit shapes like v5e:2x2.
The mesh (data x fsdp x tensor, one may be -1) comes from the config's `mesh` field.
Prints a summary, then, last, one JSON line: topology, num_chips, per_chip_hbm_bytes (arguments
+ temporaries + outputs - aliased, from the compiler's memory analysis), hbm_capacity_bytes, fits,
flops_per_step (analytic forward+backward FLOPs, as MFU uses), compiler_flops_per_step (XLA's
count over all chips; undercounts scanned layers), byte breakdown, compile time.
"""
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; run nothing locally
# libtpu otherwise logs an error looking for TPU worker hosts that do not exist here.
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# Compiling needs no exclusive hold on libtpu: let several compilations run side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The repository root: experiment configs import experiments.*, which is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-256", "TPU topology: v5p-256, v5e-16, v5e:2x2, ...")
_PROGRAM = flags.DEFINE_enum(
    "program", "auto", ["auto", "train_step", "forward_backward"],
    "what to compile: the full train step (optimizer state, donation; needs the config's train "
    "and optimizer sections) or the model's forward+backward (for a U-Net: weights frozen, the "
    "gradient to the condition only); auto picks train_step when it can")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/illume/vicuna7b.py")
  from unimodal_jax import aot
  from unimodal_jax.models import build

  cfg = _CONFIG.value
  model_config = build.config_from_dict(cfg.model.to_dict())
  program = _PROGRAM.value
  if program == "auto":
    program = "train_step" if ("train" in cfg and "optimizer" in cfg) else "forward_backward"
  if model_config.KIND == "unet":
    return compile_unet(cfg, program)
  print(f"compiling the {program.replace('_', ' ')} of {model_config.num_params() / 1e9:.2f}B "
        f"params, batch {cfg.global_batch} x {cfg.seq_len} for {_TOPOLOGY.value} ...",
        file=sys.stderr, flush=True)
  if program == "train_step":
    result = aot.compile_train_step_for_topology(cfg, _TOPOLOGY.value)
  else:
    if model_config is not build.llm_config(model_config):
      raise app.UsageError("--program=forward_backward compiles a plain decoder; use "
                           "train_step for an ILLUME config")
    result = aot.compile_for_topology(model_config, cfg.mesh.to_dict(), _TOPOLOGY.value,
                                      cfg.global_batch, cfg.seq_len)
    result["program"] = "forward_backward"
  _summary(result)


def compile_unet(cfg, program: str) -> None:
  """A diffusion U-Net: forward_backward = frozen weights, gradient to the condition only (as
  DreamLLM trains through SD); train_step = full fine-tuning."""
  from unimodal_jax import aot
  what = ("frozen U-Net, gradient to the condition" if program == "forward_backward"
          else "U-Net fine-tuning step")
  print(f"compiling the {what}, batch {cfg.global_batch} for {_TOPOLOGY.value} ...",
        file=sys.stderr, flush=True)
  result = aot.compile_unet_for_topology(cfg, _TOPOLOGY.value, program)
  _summary(result)


def _summary(result) -> None:
  gib = 1024**3
  print(f"{result['topology']}: {result['num_chips']} chips, per chip "
        f"{result['per_chip_hbm_bytes'] / gib:.2f} GiB of {result['hbm_capacity_bytes'] / gib:.0f} "
        f"GiB -> {'fits' if result['fits'] else 'DOES NOT FIT'}; compiled in "
        f"{result['compile_s']:.1f}s", file=sys.stderr)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
