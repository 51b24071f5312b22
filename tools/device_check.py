"""The checks that need a GPU, in one short run on a lent NVIDIA machine (H100/H200): the Pallas
flash-attention kernel against cuDNN's, an SD-2.1-base U-Net train step and a ~1B decoder train
step, all bf16. Run by tools/device_check.sh; never by the tests.

    python tools/device_check.py [--parts flash,unet,decoder] [--budget_s 420] [--smoke]

- flash: flash_attention(q, k, v, causal=True, impl='pallas') against
  jax.nn.dot_product_attention(..., implementation='cudnn', is_causal=True), [B, L, H, D] bf16,
  forward + backward (gradients of all three inputs) at each size: milliseconds, the ratio
  (cudnn time / pallas time: above 1, Pallas is faster), nominal TFLOP/s, and max |difference|
  of the outputs and of dq.
- unet: the SD-2.1-base-shaped U-Net (block_out_channels 320,640,1280,1280, heads 5,10,20,20,
  cross_attention_dim 1024, 64x64x4 latents, condition length 77, batch 8), float32 parameters
  and AdamW state with bfloat16 compute (the usual mixed precision), epsilon-prediction MSE,
  through tools/bench_unet.py's step: steps/s. attention_impl 'auto' (the Pallas kernel on a
  GPU); if that fails, its error is kept and the step is timed again with 'xla'.
- decoder: a LLaMA-shaped decoder of ~1.0B parameters (hidden 2048, 16 layers, 16 heads, MLP
  5632, vocab 32000), float32 parameters with bfloat16 compute, batch 8 x 1024 tokens, through
  make_train_step as tools/bench_train.py runs it: tokens/s (and the same 'auto' -> 'xla'
  fallback).

Each timing: a warm-up (the compile included), then the median of several steps each ended by
jax.block_until_ready. Each part runs under its own try/except, so one failure still reports the
others (with its error string); a part not started before --budget_s seconds is skipped.
--smoke runs every part at tiny sizes on the CPU (the Pallas GPU kernels in interpret mode,
XLA's attention in place of cuDNN), to check this script where no GPU is. Progress goes to stderr;
stdout gets ONE JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)
PARTS = ("flash", "unet", "decoder")


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " +
                 ",".join(PARTS))
  p.add_argument("--budget_s", type=float, default=420.0,
                 help="start no part after this many seconds (a compile cannot be cut short)")
  p.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
  p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
  a = p.parse_args(argv)
  a.parts = [x for x in a.parts.split(",") if x]
  bad = [x for x in a.parts if x not in PARTS]
  if bad:
    p.error(f"--parts: {bad} not in {PARTS}")
  return a


def _log(*args):
  print("device_check:", *args, file=sys.stderr, flush=True)


def _median_s(fn, runs: int, warmup: int = 2) -> float:
  """Median seconds of fn() (which blocks on its result) after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e)[:300]}"


def flash_check(a) -> dict:
  """Pallas flash attention against cuDNN (smoke: interpreted kernel against XLA), bf16,
  forward + backward, per size."""
  import jax
  import jax.numpy as jnp
  from unimodal_jax.kernels.flash_attention import flash_attention
  sizes = [(1, 256, 2, 64)] if a.smoke else [(4, 2048, 16, 128), (1, 8192, 16, 128)]
  ref_impl = "xla" if a.smoke else "cudnn"
  impls = {
      # Smoke: the GPU (Triton) kernels in interpret mode, the code path a GPU runs.
      "pallas": lambda q, k, v: flash_attention(q, k, v, causal=True, impl="pallas",
                                                interpret=a.smoke, platform="gpu"),
      ref_impl: lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=ref_impl,
                                                             is_causal=True),
  }
  results = []
  for b, length, h, d in sizes:
    entry = {"shape_blhd": [b, length, h, d]}
    results.append(entry)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, do = (jax.random.normal(kk, (b, length, h, d), jnp.bfloat16) for kk in keys)
    # Causal: half the score matrix; forward 2 matmuls, backward 5 (the usual 3.5x).
    flops = 3.5 * 2 * 2 * b * h * length * length * d / 2
    outs = {}
    for name, attend in impls.items():
      try:
        def fwd_bwd(q, k, v, attend=attend):
          o, vjp = jax.vjp(attend, q, k, v)
          return (o,) + vjp(do)
        step = jax.jit(fwd_bwd)
        outs[name] = jax.block_until_ready(step(q, k, v))
        seconds = _median_s(lambda: jax.block_until_ready(step(q, k, v)), a.runs)
        entry[f"{name}_ms"] = round(seconds * 1e3, 3)
        entry[f"{name}_tflops"] = round(flops / seconds / 1e12, 1)
      except Exception as e:  # keep the other implementation's figures
        entry[f"{name}_error"] = _error(e)
        _log(f"flash {name} {entry['shape_blhd']}:", traceback.format_exc())
    if len(outs) == 2:
      mine, ref = outs["pallas"], outs[ref_impl]
      diff = lambda x, y: float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
      entry["max_abs_diff_out"] = diff(mine[0], ref[0])
      entry["max_abs_diff_dq"] = diff(mine[1], ref[1])
      entry["ref_max_abs_out"] = float(jnp.max(jnp.abs(ref[0].astype(jnp.float32))))
      entry[f"ratio_{ref_impl}_ms_over_pallas_ms"] = round(entry[f"{ref_impl}_ms"]
                                                           / entry["pallas_ms"], 3)
    _log("flash", entry)
  return {"reference": ref_impl, "sizes": results}


def _with_fallback(measure, label: str) -> dict:
  """measure('auto'), and where that fails measure('xla') with the first error kept."""
  try:
    return {"attention_impl": "auto", **measure("auto")}
  except Exception as e:
    _log(f"{label} with attention_impl='auto' failed:", traceback.format_exc())
    first = _error(e)
  result = {"attention_impl": "xla", "auto_error": first}
  result.update(measure("xla"))
  return result


def unet_check(a) -> dict:
  """The SD-2.1-base U-Net's full train step, float32 params, bf16 compute: steps/s."""
  import jax
  import jax.numpy as jnp
  import bench_unet
  from unimodal_jax.models.unet import UNet, UNetConfig
  if a.smoke:
    shape = dict(sample_size=8, block_out_channels=(32, 32), num_attention_heads=(2, 2),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                 cross_attention_dim=16, norm_num_groups=8, condition_length=5)
    batch_size = 2
  else:  # UNetConfig's defaults are SD-2.1-base's shape
    shape, batch_size = dict(sample_size=64, condition_length=77), 8
  ns = argparse.Namespace(batch=batch_size, sample_size=shape["sample_size"], latent_channels=4,
                          condition_length=shape["condition_length"],
                          cross_attention_dim=shape.get("cross_attention_dim", 1024))
  batch = bench_unet.make_batch(ns)

  def measure(impl):
    config = UNetConfig(**shape, dtype="bfloat16", param_dtype="float32", attention_impl=impl)
    model = UNet(config)
    params = jax.jit(model.init)(jax.random.key(0), *(
        jnp.zeros(x.shape, x.dtype) for x in config.example_inputs()))["params"]
    n_params = sum(x.size for x in jax.tree.leaves(params))
    run = bench_unet.unet_step_runner(model, params, batch, "full")
    loss = run()
    seconds = _median_s(run, a.runs)
    return {"steps_per_s": round(1 / seconds, 3), "images_per_s": round(batch_size / seconds, 2),
            "step_ms": round(seconds * 1e3, 2), "first_loss": loss, "params": n_params}

  result = _with_fallback(measure, "unet")
  result.update(batch=batch_size, latent=[shape["sample_size"]] * 2 + [4],
                param_dtype="float32", compute_dtype="bfloat16", mode="full")
  return result


def decoder_check(a) -> dict:
  """A ~1B LLaMA-shaped decoder's train step (make_train_step, AdamW), float32 params, bf16
  compute: tokens/s."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from unimodal_jax.models.decoder import Decoder
  from unimodal_jax.models.decoder_config import DecoderConfig
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import TrainState
  from unimodal_jax.train.step import make_train_step
  if a.smoke:
    shape = dict(vocab_size=256, hidden_size=64, intermediate_size=176, num_layers=2,
                 num_heads=4, num_kv_heads=4)
    batch_size, seq_len = 2, 64
  else:
    shape = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=16,
                 num_heads=16, num_kv_heads=16)
    batch_size, seq_len = 8, 1024
  tokens = np.random.default_rng(0).integers(0, shape["vocab_size"],
                                             (batch_size, seq_len + 1)).astype(np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}

  def measure(impl):
    cfg = DecoderConfig(**shape, max_seq_len=seq_len, dtype="bfloat16", param_dtype="float32",
                        attention_impl=impl)
    model = Decoder(cfg)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0),
                                               jnp.zeros((1, 8), jnp.int32)))["params"]
    opt = {"learning_rate": 1e-4, "warmup_steps": 0, "schedule": "constant", "b1": 0.9,
           "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_grad_norm": 0.0}
    tx, schedules = optimizer.build(opt, params, 1000)
    zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
    holder = [TrainState(step=zero(), params=params, opt_state=tx.init(params),
                         rng=jnp.zeros((2,), jnp.uint32), nonfinite_steps=zero(),
                         consecutive_nonfinite=zero())]
    step = jax.jit(make_train_step(model, tx, jax.tree.map(lambda _: False, params), schedules),
                   donate_argnums=(0,))

    def run():
      holder[0], metrics = step(holder[0], batch)
      return float(jax.block_until_ready(metrics["loss"]))

    loss = run()
    seconds = _median_s(run, a.runs)
    tokens_per_s = batch_size * seq_len / seconds
    return {"tokens_per_s": round(tokens_per_s, 1), "step_ms": round(seconds * 1e3, 2),
            "first_loss": loss, "params": cfg.num_params(),
            "model_tflops": round(cfg.flops_per_token(seq_len) * tokens_per_s / 1e12, 1)}

  result = _with_fallback(measure, "decoder")
  result.update(batch=batch_size, seq_len=seq_len, param_dtype="float32",
                compute_dtype="bfloat16", **{k: shape[k] for k in ("hidden_size", "num_layers")})
  return result


def main(argv=None):
  a = _args(argv)
  if a.smoke:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  start = time.perf_counter()
  result = {"smoke": a.smoke}
  try:
    import jax
    dev = jax.devices()[0]
    result.update(device=dev.device_kind, platform=dev.platform, jax=jax.__version__,
                  devices=jax.device_count())
    if not a.smoke and dev.platform != "gpu":
      result["warning"] = f"no GPU: JAX runs on {dev.platform}; the figures are not a GPU's"
  except Exception as e:  # report even this
    result["error"] = _error(e)
    print(json.dumps(result), flush=True)
    return result
  _log(result)
  checks = {"flash": flash_check, "unet": unet_check, "decoder": decoder_check}
  for name in a.parts:
    elapsed = time.perf_counter() - start
    if elapsed > a.budget_s:
      result[name] = {"skipped": f"out of time ({elapsed:.0f} s > --budget_s {a.budget_s:.0f})"}
      continue
    t0 = time.perf_counter()
    try:
      result[name] = checks[name](a)
    except Exception as e:  # one part's failure must not hide the others
      _log(f"{name} failed:", traceback.format_exc())
      result[name] = {"error": _error(e)}
    result[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    _log(name, result[name])
  result["wall_s"] = round(time.perf_counter() - start, 1)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
