"""The project's U-Net train step against diffusers' PyTorch UNet2DConditionModel on the same
machine, SD-2.x-style config, batch and starting weights.

    python tools/bench_unet.py [--batch 4 --sample_size 32 --channels 32,64,64 --heads 1,2,2
                                --layers_per_block 1 --cross_attention_dim 128
                                --condition_length 16 --norm_groups 32] [--mode full|frozen]
                               [--steps 5 --repeats 5] [--no_compile] [--ops]

Both sides: float32, AdamW, epsilon-prediction loss (mean squared error between the U-Net's output
on given noisy latents, timesteps and condition and the noise). The diffusers model is built
first and its state dict converted with hf_diffusers, so both start from the same weights.
--mode full trains every U-Net weight; --mode frozen freezes the U-Net and trains the condition
alone (DreamLLM's case: the gradient flows through a frozen SD U-Net back to the LLM's dream
queries; ours takes jax.grad w.r.t. the condition, torch has requires_grad on it alone).
The sides are timed alternately in one run (`--repeats` rounds of `--steps` steps each, after a
warm-up) and the medians compared, so machine noise hits both alike. Also times
`torch.compile`d diffusers where it compiles here. Prints one JSON line: steps_per_s,
diffusers_steps_per_s, ratio_vs_diffusers, diffusers_compiled_steps_per_s,
ratio_vs_diffusers_compiled, torch_compile_error, first_losses (each side's losses at steps 1 and
2 of its warm-up), loss_rel_difference (ours vs diffusers there: both time the same computation),
diffusers_compiled_loss_rel_difference (likewise), mode, torch_threads, omp_wait_policy, config,
step_seconds_median. `--ops` prints instead where the time goes: each main op (3x3 conv,
GroupNorm, attention), forward+backward, ours against torch at the first block's shape.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Before torch loads libgomp: its workers' spin-waiting on a CPU shared with other processes made
# each diffusers op ~100x slower here (a tiny forward 1.7 s, passive 0.02 s), timing the
# contention instead of the computation. Set OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_model_args  # noqa: E402  (beside this file)

MODES = ("full", "frozen")


def _ints(text: str) -> tuple:
  return tuple(int(x) for x in text.split(","))


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--sample_size", type=int, default=32, help="latent height = width")
  p.add_argument("--latent_channels", type=int, default=4)
  p.add_argument("--channels", type=_ints, default=(32, 64, 64),
                 help="block_out_channels, comma-separated; cross-attention in all but the last")
  p.add_argument("--heads", type=_ints, default=(1, 2, 2),
                 help="attention heads per block (one number: the same in every block)")
  p.add_argument("--layers_per_block", type=int, default=1)
  p.add_argument("--cross_attention_dim", type=int, default=128)
  p.add_argument("--condition_length", type=int, default=16)
  p.add_argument("--norm_groups", type=int, default=32)
  p.add_argument("--mode", choices=MODES, default="full",
                 help="full: train the U-Net; frozen: U-Net frozen, train the condition")
  p.add_argument("--steps", type=int, default=5, help="steps per timed round")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds per side")
  p.add_argument("--no_compile", action="store_true", help="skip torch.compile")
  p.add_argument("--ops", action="store_true",
                 help="instead of the step: the profile by op (3x3 conv, GroupNorm, attention, "
                      "each forward+backward at the first block's shape), both sides alternated")
  a = p.parse_args(argv)
  if len(a.heads) == 1:
    a.heads = a.heads * len(a.channels)
  if len(a.heads) != len(a.channels):
    p.error(f"--heads has {len(a.heads)} entries; --channels has {len(a.channels)}")
  return a


def hf_config(a) -> dict:
  """The diffusers UNet2DConditionModel kwargs: SD 2.x style (linear projections, heads per
  block), cross-attention in every block but the deepest."""
  n = len(a.channels)
  cross = n > 1
  return dict(
      sample_size=a.sample_size, in_channels=a.latent_channels, out_channels=a.latent_channels,
      layers_per_block=a.layers_per_block, block_out_channels=list(a.channels),
      down_block_types=["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D" if cross
                                                             else "CrossAttnDownBlock2D"],
      up_block_types=["UpBlock2D" if cross else "CrossAttnUpBlock2D"]
      + ["CrossAttnUpBlock2D"] * (n - 1),
      attention_head_dim=list(a.heads), cross_attention_dim=a.cross_attention_dim,
      norm_num_groups=a.norm_groups, use_linear_projection=True)


def make_batch(a, seed: int = 0) -> dict:
  """NHWC noisy latents, integer timesteps, condition and the noise target (numpy, float32)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (a.batch, a.sample_size, a.sample_size, a.latent_channels)
  return {"sample": rng.standard_normal(shape, np.float32),
          "timesteps": rng.integers(0, 1000, (a.batch,)).astype(np.int32),
          "condition": rng.standard_normal((a.batch, a.condition_length,
                                            a.cross_attention_dim), np.float32),
          "noise": rng.standard_normal(shape, np.float32)}


def reference_model(a):
  """diffusers' U-Net with seed-0 initial weights: the same ones on every call."""
  import diffusers
  import torch
  torch.manual_seed(0)
  return diffusers.UNet2DConditionModel(**hf_config(a)).float().train()


def jax_runner(a, batch):
  """A function running one of the project's train steps (blocking) from the reference's
  weights; returns the step's loss (before its update)."""
  import jax
  import jax.numpy as jnp
  from unimodal_jax import hf_diffusers
  from unimodal_jax.models.unet import UNet
  ref = reference_model(a)
  config = hf_diffusers.config_from_diffusers(
      {"_class_name": "UNet2DConditionModel", **hf_config(a)},
      condition_length=a.condition_length)
  unet_params = hf_diffusers.params_from_diffusers(
      {k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
  return unet_step_runner(UNet(config), jax.tree.map(jnp.asarray, unet_params), batch, a.mode)


def unet_step_runner(model, unet_params, batch, mode: str):
  """run() -> loss: one (blocking) train step of `model` on the batch (sample, timesteps,
  condition, noise), AdamW through the project's optimizer and make_loss_step, state donated.
  mode 'full' trains unet_params; 'frozen' trains the condition alone, the U-Net's weights an
  input of the step (not donated: no gradient, no optimizer state for them)."""
  import jax
  import jax.numpy as jnp
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import TrainState
  from unimodal_jax.train.step import make_loss_step
  inputs = {k: jnp.asarray(batch[k]) for k in ("sample", "timesteps", "noise")}

  def mse(eps, noise):
    return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))

  if mode == "full":
    params = unet_params
    inputs["condition"] = jnp.asarray(batch["condition"])

    def loss_fn(p, model_state, b, rng):
      eps = model.apply({"params": p}, b["sample"], b["timesteps"], b["condition"])
      return mse(eps, b["noise"]), ({}, model_state)
  elif mode == "frozen":
    params = {"condition": jnp.asarray(batch["condition"])}
    inputs["unet"] = unet_params

    def loss_fn(p, model_state, b, rng):
      eps = model.apply({"params": b["unet"]}, b["sample"], b["timesteps"], p["condition"])
      return mse(eps, b["noise"]), ({}, model_state)
  else:
    raise ValueError(f"mode {mode!r}: expected one of {MODES}")

  opt = {"learning_rate": 1e-4, "warmup_steps": 0, "schedule": "constant", "b1": 0.9,
         "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "clip_grad_norm": 0.0}
  tx, schedules = optimizer.build(opt, params, 1000)
  zero = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
  state = TrainState(step=zero(), params=params, opt_state=tx.init(params),
                     rng=jnp.zeros((2,), jnp.uint32), nonfinite_steps=zero(),
                     consecutive_nonfinite=zero())
  step = jax.jit(make_loss_step(loss_fn, tx, schedules), donate_argnums=(0,))
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], inputs)
    jax.block_until_ready(metrics["loss"])
    return float(metrics["loss"])
  return run


def torch_runner(a, batch, compiled: bool):
  """The same step in PyTorch: diffusers' U-Net, torch.optim.AdamW, the same loss."""
  import torch
  model = reference_model(a)
  nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  sample, noise = nchw(batch["sample"]), nchw(batch["noise"])
  timesteps = torch.from_numpy(batch["timesteps"].astype("int64"))
  condition = torch.from_numpy(batch["condition"].copy())
  if a.mode == "full":
    trained = list(model.parameters())
  else:
    model.requires_grad_(False)
    condition.requires_grad_(True)
    trained = [condition]
  opt = torch.optim.AdamW(trained, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
  forward = torch.compile(model) if compiled else model

  def run():
    eps = forward(sample, timesteps, condition).sample
    loss = torch.nn.functional.mse_loss(eps, noise)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())
  return run


def op_profile(a) -> dict:
  """Median ms of the U-Net's main ops, forward+backward, ours (XLA:CPU) against torch, at the
  first block's activation shape: where the step's time goes on each side."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from unimodal_jax.models import diffusion_blocks as blocks
  from unimodal_jax.models.attention import full_attention
  b, s, c = a.batch, a.sample_size, a.channels[0]
  heads = a.heads[0]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b, s, s, c), np.float32)
  w = rng.standard_normal((3, 3, c, c), np.float32) * 0.05
  q = rng.standard_normal((b, s * s, heads, c // heads), np.float32)
  norm = blocks.group_norm(min(a.norm_groups, c), 1e-5, dtype=jnp.float32,
                           param_dtype=jnp.float32, name=None)
  norm_params = norm.init(jax.random.key(0), x)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = {
      "conv3x3": (jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1))), (x, w)),
      "group_norm": (jax.jit(jax.grad(lambda p, x: jnp.sum(norm.apply(p, x) ** 2), (0, 1))),
                     (norm_params, x)),
      "attention": (jax.jit(jax.grad(lambda q: jnp.sum(full_attention(q, q, q, impl="xla") ** 2))),
                    (q,)),
  }
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  wt = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  qt = torch.tensor(q.transpose(0, 2, 1, 3), requires_grad=True)
  gn = torch.nn.GroupNorm(min(a.norm_groups, c), c)
  theirs = {
      "conv3x3": lambda: (torch.nn.functional.conv2d(xt, wt, padding=1) ** 2).sum().backward(),
      "group_norm": lambda: (gn(xt) ** 2).sum().backward(),
      "attention": lambda: (torch.nn.functional.scaled_dot_product_attention(qt, qt, qt) ** 2
                            ).sum().backward(),
  }
  result = {}
  for name, (fn, args) in ours.items():
    run_ours = lambda: jax.block_until_ready(fn(*args))
    run_ours(), theirs[name]()
    t_ours, t_theirs = [], []
    for _ in range(a.repeats):
      t_ours.append(bench_model_args.seconds_per_step(run_ours, a.steps))
      t_theirs.append(bench_model_args.seconds_per_step(theirs[name], a.steps))
    result[name] = {"ours_ms": round(1e3 * statistics.median(t_ours), 3),
                    "torch_ms": round(1e3 * statistics.median(t_theirs), 3)}
    result[name]["ratio_torch_over_ours"] = round(
        result[name]["torch_ms"] / result[name]["ours_ms"], 3)
  return {"ops": result, "shape_bhwc": [b, s, s, c], "heads": heads}


def main(argv=None):
  a = _args(argv)
  import torch
  if a.ops:
    result = op_profile(a)
    print(json.dumps(result), flush=True)
    return result
  batch = make_batch(a)
  sides = {"ours": jax_runner(a, batch), "diffusers": torch_runner(a, batch, compiled=False)}
  losses, compile_error = {}, None
  if not a.no_compile:
    try:
      compiled = torch_runner(a, batch, compiled=True)
      losses["diffusers_compiled"] = [compiled()]  # compiles here, or raises
      sides["diffusers_compiled"] = compiled
    except Exception as e:  # torch.compile needs a working C++ toolchain; report, do not fail
      compile_error = f"{type(e).__name__}: {str(e)[:200]}"
  for name, run in sides.items():  # warm-up (and XLA compile): steps 1 and 2 from equal weights
    losses[name] = (losses.get(name, []) + [run(), run()])[:2]
  times = {k: [] for k in sides}
  for r in range(a.repeats):
    for name, run in sides.items():
      times[name].append(bench_model_args.seconds_per_step(run, a.steps))
    print(f"round {r + 1}/{a.repeats}: " + ", ".join(
        f"{k} {1 / v[-1]:.2f} steps/s" for k, v in times.items()), file=sys.stderr, flush=True)
  rate = {k: 1 / statistics.median(v) for k, v in times.items()}
  has_compiled = "diffusers_compiled" in rate

  def rel(side):  # the largest relative difference from eager diffusers' losses
    worst = max(abs(o - d) / abs(d) for o, d in zip(losses[side], losses["diffusers"]))
    return float(f"{worst:.3g}")
  result = {
      "steps_per_s": round(rate["ours"], 3),
      "diffusers_steps_per_s": round(rate["diffusers"], 3),
      "ratio_vs_diffusers": round(rate["ours"] / rate["diffusers"], 3),
      "diffusers_compiled_steps_per_s": (round(rate["diffusers_compiled"], 3) if has_compiled
                                         else None),
      "ratio_vs_diffusers_compiled": (round(rate["ours"] / rate["diffusers_compiled"], 3)
                                      if has_compiled else None),
      "torch_compile_error": compile_error,
      "first_losses": losses,
      "loss_rel_difference": rel("ours"),
      "diffusers_compiled_loss_rel_difference": (rel("diffusers_compiled") if has_compiled
                                                 else None),
      "mode": a.mode,
      "torch_threads": torch.get_num_threads(),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(a).items()
                 if k not in ("no_compile",)},
      "step_seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
  }
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
