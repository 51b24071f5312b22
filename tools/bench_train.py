"""The project's train step against Hugging Face's PyTorch LlamaForCausalLM on the same machine,
config and batch (issue 8's yardstick).

    python tools/bench_train.py [--batch 8 --seq_len 256 --hidden 256 --layers 4 --heads 8
                                 --mlp 704 --vocab 8192] [--steps 5 --repeats 5] [--no_compile]

Both sides: float32, AdamW, the same random token batch, next-token loss over every position.
The two are timed alternately in one run (`--repeats` rounds of `--steps` steps each, after a
warm-up), and the medians compared, so machine noise hits both alike. Also times
`torch.compile`d HF where it compiles here, and measures this machine's float32 matmul peak in
the same run for MFU. Prints one JSON line: tokens_per_s, hf_tokens_per_s, ratio_vs_hf,
hf_compiled_tokens_per_s, ratio_vs_hf_compiled, mfu, hf_mfu, peak_flops, config.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_model_args  # noqa: E402  (beside this file)


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=256)
  bench_model_args.add_model_args(p)
  p.add_argument("--steps", type=int, default=5, help="steps per timed round")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds per side")
  p.add_argument("--no_compile", action="store_true", help="skip torch.compile")
  return p.parse_args(argv)


def decoder_config(a):
  return bench_model_args.decoder_config(a, a.seq_len)


def jax_runner(a, tokens):
  """A function running one of the project's train steps (blocking), as the loop runs it."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from unimodal_jax.models.decoder import Decoder
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import TrainState
  from unimodal_jax.train.step import make_train_step
  cfg = decoder_config(a)
  model = Decoder(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  params = params["params"]
  opt = {"learning_rate": 1e-4, "warmup_steps": 0, "schedule": "constant", "b1": 0.9,
         "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_grad_norm": 0.0}
  tx, schedules = optimizer.build(opt, params, 1000)
  frozen = jax.tree.map(lambda _: False, params)
  zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
  state = TrainState(step=zero(), params=params, opt_state=tx.init(params),
                     rng=jnp.zeros((2,), jnp.uint32), nonfinite_steps=zero(),
                     consecutive_nonfinite=zero())
  step = jax.jit(make_train_step(model, tx, frozen, schedules), donate_argnums=(0,))
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"])
  return run, cfg


def torch_runner(a, tokens, compiled: bool):
  import torch
  import transformers
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(
      vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.mlp,
      num_hidden_layers=a.layers, num_attention_heads=a.heads,
      num_key_value_heads=a.kv_heads or a.heads, max_position_embeddings=a.seq_len,
      rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa")
  model = transformers.LlamaForCausalLM(hf_cfg).float().train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
  forward = torch.compile(model) if compiled else model
  ids = torch.from_numpy(tokens[:, :-1].astype("int64"))
  labels = torch.from_numpy(tokens[:, 1:].astype("int64"))

  def run():
    logits = forward(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())
  return run


def main(argv=None):
  a = _args(argv)
  import numpy as np
  from unimodal_jax.train import metrics
  tokens = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq_len + 1)).astype(np.int32)
  ours, cfg = jax_runner(a, tokens)
  sides = {"ours": ours, "hf": torch_runner(a, tokens, compiled=False)}
  compile_error = None
  if not a.no_compile:
    try:
      compiled = torch_runner(a, tokens, compiled=True)
      compiled()  # compiles here, or raises
      sides["hf_compiled"] = compiled
    except Exception as e:  # torch.compile needs a working C++ toolchain; report, do not fail
      compile_error = f"{type(e).__name__}: {str(e)[:200]}"
  times = bench_model_args.time_alternately(sides, a.repeats, a.steps, a.batch * a.seq_len)
  peak = metrics.measure_peak_flops()
  tokens_per_step = a.batch * a.seq_len
  rate = {k: tokens_per_step / statistics.median(v) for k, v in times.items()}
  flops_per_token = cfg.flops_per_token(a.seq_len)
  result = {
      "tokens_per_s": round(rate["ours"], 1),
      "hf_tokens_per_s": round(rate["hf"], 1),
      "ratio_vs_hf": round(rate["ours"] / rate["hf"], 3),
      "hf_compiled_tokens_per_s": round(rate["hf_compiled"], 1) if "hf_compiled" in rate else None,
      "ratio_vs_hf_compiled": (round(rate["ours"] / rate["hf_compiled"], 3)
                               if "hf_compiled" in rate else None),
      "torch_compile_error": compile_error,
      "mfu": round(flops_per_token * rate["ours"] / peak, 4),
      "hf_mfu": round(flops_per_token * rate["hf"] / peak, 4),
      "peak_flops": round(peak, 0),
      "config": {k: getattr(a, k) for k in ("batch", "seq_len", "hidden", "layers", "heads",
                                            "kv_heads", "mlp", "vocab", "steps", "repeats")},
      "step_seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
  }
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
