"""Compile for a TPU pod on a CPU machine: topology names, the forward+backward program, and the
compiler's memory and cost figures.

With the `libtpu` wheel installed, `jax.experimental.topologies.get_topology_desc` yields real
TPU device descriptions; `jax.jit(...).lower(abstract args).compile()` then runs the TPU compiler
here, so a config can be checked against a pod's HBM before anyone pays for the pod.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from unimodal_jax import sharding
from unimodal_jax.models import build
from unimodal_jax.models.decoder import Decoder
from unimodal_jax.models.decoder_config import DecoderConfig

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  hbm_bytes: int
  bf16_flops: float  # peak, per chip
  hbm_bytes_per_s: float  # HBM bandwidth, per chip
  cores_per_chip_in_name: int  # v4/v5p names count TensorCores (2 per chip); v5e/v6e count chips
  dims: int  # torus dimensions


# Vendor figures (see DESIGN.md).
CHIPS = {
    "v4": ChipSpec(32 * GiB, 275e12, 1.228e12, 2, 3),
    "v5p": ChipSpec(95 * GiB, 459e12, 2.765e12, 2, 3),
    "v5e": ChipSpec(16 * GiB, 197e12, 0.819e12, 1, 2),
    "v6e": ChipSpec(32 * GiB, 918e12, 1.640e12, 1, 2),
}


def topology_shape(generation: str, num_chips: int) -> tuple[int, ...]:
  """The standard slice shape for a chip count: powers of two, as balanced as possible
  (v5p-256 -> 4x4x8, v5e-256 -> 16x16)."""
  if num_chips < 1 or num_chips & (num_chips - 1):
    raise ValueError(f"{generation}: chip count {num_chips} is not a power of two")
  spec = CHIPS[generation]
  dims = [1] * spec.dims
  while math.prod(dims) < num_chips:
    smallest = min(dims)
    i = max(j for j, d in enumerate(dims) if d == smallest)  # grow the last of the smallest
    dims[i] *= 2
  # Ascending, with unit dimensions last, as the slices are named (v5p-8 is 2x2x1).
  return tuple(sorted(d for d in dims if d > 1)) + tuple(d for d in dims if d == 1)


def parse_topology(name: str) -> tuple[str, str, int]:
  """'v5p-256' (the cloud's slice name) or 'v5e:2x2' (explicit shape) ->
  (generation, topology name for get_topology_desc, number of chips)."""
  m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
  if m:
    gen, count = m.group(1), int(m.group(2))
    per_chip = CHIPS[gen].cores_per_chip_in_name
    if count % per_chip:
      raise ValueError(f"topology {name!r}: {gen} slice names count {per_chip} cores per chip")
    shape = topology_shape(gen, count // per_chip)
    return gen, f"{gen}:{'x'.join(map(str, shape))}", count // per_chip
  m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+)+)", name)
  if m:
    gen, shape = m.group(1), tuple(int(x) for x in m.group(2).split("x"))
    return gen, name, math.prod(shape)
  raise ValueError(f"unknown topology {name!r}: use a slice name like v5p-256, v5e-16, v6e-64, "
                   "or an explicit shape like v5e:2x2, v5p:4x4x8")


def topology_devices(name: str):
  """TPU device descriptions for a topology (needs the libtpu wheel; no TPU)."""
  import os
  from jax.experimental import topologies
  # Compiling needs no exclusive hold on libtpu (its lockfile is for running on a TPU), and
  # there are no TPU worker hosts to look for.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  gen, topo, chips = parse_topology(name)
  shape = [int(v) for v in topo.split(":")[1].split("x")]
  bounds = (min(2, shape[0]), min(2, shape[1]) if len(shape) > 1 else 1, 1)
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topo,
                                        chip_config_name="default",
                                        chips_per_host_bounds=bounds, num_slices=1)
  except Exception as e:  # libtpu missing, or an unknown shape
    raise RuntimeError(f"cannot describe TPU topology {topo!r} ({name}); is the libtpu wheel "
                       f"installed (see requirements.txt)? {e}") from e
  return gen, desc.devices


def next_token_loss(model: Decoder, params, tokens):
  """Mean next-token cross entropy over tokens[:, 1:]."""
  logits = model.apply({"params": params}, tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def compile_forward_backward(config: DecoderConfig, mesh, global_batch: int, seq_len: int):
  """AOT-compile loss and grads for `mesh` (any devices, TPU descriptions included)."""
  sharding.check_batch_divisible(global_batch, mesh, "global_batch")
  model = Decoder(config)
  boxed = sharding.abstract_params(model, config)
  param_sh = sharding.param_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), param_sh)
  tokens = jax.ShapeDtypeStruct((global_batch, seq_len + 1), jnp.int32,
                                sharding=sharding.batch_sharding(mesh))
  step = jax.jit(jax.value_and_grad(lambda p, t: next_token_loss(model, p, t)),
                 in_shardings=(param_sh, tokens.sharding),
                 out_shardings=(NamedSharding(mesh, P()), param_sh))
  with sharding.activation_sharding(mesh):
    lowered = step.lower(abstract, tokens)
  return lowered.compile()


def compile_train_step(config, mesh):
  """AOT-compile the full train step (forward, backward, optimizer update with its sharded state,
  donated buffers) of an experiment config, as the training loop runs it."""
  from unimodal_jax.train import batch_spec, config_checks, optimizer
  from unimodal_jax.train.state import state_shardings
  from unimodal_jax.train.step import make_train_step
  from unimodal_jax.train.step import options as step_options

  model_config = build.config_from_dict(config.model.to_dict())
  config_checks.check_batch(config, mesh, process_count=1)
  model = build.build(model_config)
  params = nn.meta.unbox(sharding.abstract_params(model, model_config))
  opt_cfg = config.optimizer.to_dict()
  tx, schedules = optimizer.build(opt_cfg, params, int(config.train.steps))
  frozen = optimizer.frozen_mask(params, optimizer.parse_groups(opt_cfg.get("groups")))
  abstract_state, state_sh = state_shardings(model, model_config, tx, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  # The very fields, shapes and dtypes the training loop feeds (train/batch_spec.py).
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
           for k, v in batch_spec.batch_spec(config).items()}
  config_checks.check_image_size(config, model_config)
  step = jax.jit(
      make_train_step(model, tx, frozen, schedules, **step_options(config.train)),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=(0,))
  with sharding.activation_sharding(mesh):
    return step.lower(abstract_state, batch).compile()


def report(compiled, *, topology: str, generation: str, num_chips: int,
           analytic_flops_per_step: float, num_params: int, compile_s: float,
           **extra) -> dict[str, Any]:
  """The JSON-ready figures of a compiled program: per-chip memory, FLOPs, roofline."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_chip = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
              - mem.alias_size_in_bytes)
  capacity = CHIPS[generation].hbm_bytes
  flops_per_chip = float(cost.get("flops", 0.0)) if cost else 0.0
  bytes_per_chip = float(cost.get("bytes accessed", 0.0)) if cost else 0.0
  chip = CHIPS[generation]
  return {
      "topology": topology,
      "num_chips": num_chips,
      "per_chip_hbm_bytes": int(per_chip),
      "hbm_capacity_bytes": int(capacity),
      "fits": bool(per_chip <= capacity),
      # Analytic FLOPs of the whole step (for a decoder MaxText's accounting, as MFU uses).
      "flops_per_step": analytic_flops_per_step,
      # The compiler's count: per device for the SPMD program, times the chips.
      "compiler_flops_per_step": flops_per_chip * num_chips,
      # XLA's count of HBM bytes read and written, per device, times the chips.
      "compiler_bytes_per_step": bytes_per_chip * num_chips,
      **roofline(flops_per_chip, bytes_per_chip, analytic_flops_per_step / num_chips, chip),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "num_params": num_params,
      **extra,
      "compile_s": round(compile_s, 2),
  }


def decoder_report(compiled, *, config, global_batch: int, seq_len: int, **kwargs):
  result = report(compiled, analytic_flops_per_step=(
      config.flops_per_token(seq_len) * global_batch * seq_len), num_params=config.num_params(),
                  global_batch=global_batch, seq_len=seq_len, **kwargs)
  if build.llm_config(config).scan_layers:
    result["compiler_flops_note"] = ("layers are scanned: XLA's cost analysis counts the loop "
                                     "body once, so compiler_flops_per_step undercounts")
  return result


def roofline(compiler_flops_per_chip: float, bytes_per_chip: float,
             analytic_flops_per_chip: float, chip: ChipSpec) -> dict[str, float]:
  """The roofline bound of one step on one chip: the compiler's FLOPs at peak or its bytes at HBM
  bandwidth, whichever takes longer (communication and imperfect overlap only add to it), and
  the MFU that bound allows (the analytic model FLOPs against peak over that time)."""
  compute_s = compiler_flops_per_chip / chip.bf16_flops
  memory_s = bytes_per_chip / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  return {
      "roofline_compute_s": compute_s,
      "roofline_memory_s": memory_s,
      "roofline_step_s": step_s,
      "roofline_mfu": analytic_flops_per_chip / (step_s * chip.bf16_flops) if step_s else 0.0,
  }


def compile_for_topology(config: DecoderConfig, mesh_config, topology: str, global_batch: int,
                         seq_len: int) -> dict[str, Any]:
  """Forward+backward of a model config on a TPU topology: the report dict."""
  generation, devices = topology_devices(topology)
  mesh = sharding.make_mesh(mesh_config, devices)
  start = time.time()
  compiled = compile_forward_backward(config, mesh, global_batch, seq_len)
  return decoder_report(compiled, topology=topology, generation=generation,
                        num_chips=len(devices), config=config, global_batch=global_batch,
                        seq_len=seq_len, compile_s=time.time() - start)


def compile_train_step_for_topology(experiment_config, topology: str) -> dict[str, Any]:
  """The whole train step of an experiment config on a TPU topology: the report dict."""
  generation, devices = topology_devices(topology)
  mesh = sharding.make_mesh(experiment_config.mesh.to_dict(), devices)
  start = time.time()
  compiled = compile_train_step(experiment_config, mesh)
  model_config = build.config_from_dict(experiment_config.model.to_dict())
  result = decoder_report(compiled, topology=topology, generation=generation,
                          num_chips=len(devices), config=model_config,
                          global_batch=experiment_config.global_batch,
                          seq_len=experiment_config.seq_len, compile_s=time.time() - start)
  result["program"] = "train_step"
  from unimodal_jax.train import batch_spec
  result["batch_fields"] = batch_spec.describe(batch_spec.batch_spec(experiment_config))
  result["grad_accum_steps"] = int(experiment_config.train.get("grad_accum_steps", 1))
  return result


# ----------------------------------------------------------------------------- diffusion U-Net


def _unet_batch(experiment_config, model_config, mesh):
  """Abstract batch of the U-Net's training step: clean latents, noise, timesteps (the noising
  happens inside the step, as training does it) and the condition sequence."""
  b = int(experiment_config.global_batch)
  sharding.check_batch_divisible(b, mesh, "global_batch")
  size, channels = model_config.sample_size, model_config.in_channels
  sh = lambda ndim: sharding.batch_sharding(mesh, ndim)
  latents = jax.ShapeDtypeStruct((b, size, size, channels), jnp.float32, sharding=sh(4))
  return {"latents": latents, "noise": latents,
          "timesteps": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=sh(1)),
          "condition": jax.ShapeDtypeStruct(
              (b, model_config.condition_length, model_config.cross_attention_dim),
              model_config.jnp_dtype, sharding=sh(3))}


def _unet_loss(model, schedule, min_snr_gamma):
  from unimodal_jax.diffusion import schedules

  def loss(params, batch, condition):
    noisy = schedules.add_noise(schedule, batch["latents"], batch["noise"], batch["timesteps"])
    prediction = model.apply({"params": params}, noisy, batch["timesteps"], condition)
    return schedules.diffusion_loss(schedule, prediction, batch["latents"], batch["noise"],
                                    batch["timesteps"], min_snr_gamma or None)
  return loss


def compile_unet_step(experiment_config, mesh, program: str):
  """A U-Net's training step for `mesh`. program 'forward_backward': weights frozen, the
  gradient flows to the condition only (DreamLLM: on to the LLM); 'train_step': full
  fine-tuning (forward, backward, AdamW, donated state). Returns (compiled, forward FLOPs)."""
  from unimodal_jax.diffusion import schedules
  from unimodal_jax.train import optimizer
  from unimodal_jax.train.state import state_shardings
  from unimodal_jax.train.step import make_loss_step

  model_config = build.config_from_dict(experiment_config.model.to_dict())
  model = build.build(model_config)
  schedule = schedules.make_schedule(**experiment_config.schedule.to_dict())
  loss = _unet_loss(model, schedule, float(experiment_config.get("min_snr_gamma", 0.0)))
  batch = _unet_batch(experiment_config, model_config, mesh)
  boxed = sharding.abstract_params(model, model_config)
  param_sh = sharding.param_shardings(boxed, mesh)
  params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        nn.meta.unbox(boxed), param_sh)
  batch_sh = {k: v.sharding for k, v in batch.items()}
  forward_flops = _forward_flops(model, model_config, batch)
  if program not in ("forward_backward", "train_step"):
    raise ValueError(f"program={program!r}; a U-Net compiles 'forward_backward' or 'train_step'")
  if program == "forward_backward":
    step = jax.jit(jax.value_and_grad(loss, argnums=2),
                   in_shardings=(param_sh, batch_sh, batch_sh["condition"]),
                   out_shardings=(NamedSharding(mesh, P()), batch_sh["condition"]))
    with sharding.activation_sharding(mesh):
      return step.lower(params, batch, batch["condition"]).compile(), forward_flops
  if "train" not in experiment_config or "optimizer" not in experiment_config:
    raise ValueError("program 'train_step' needs the config's train and optimizer sections "
                     "(e.g. experiments/dreamllm/sd21_base.py:finetune)")
  tx, schedules_ = optimizer.build(experiment_config.optimizer.to_dict(), params,
                                   int(experiment_config.train.steps))
  abstract_state, state_sh = state_shardings(model, model_config, tx, mesh)

  def loss_fn(p, model_state, b, rng):
    del rng
    return loss(p, b, b["condition"]), ({}, model_state)

  step = jax.jit(make_loss_step(loss_fn, tx, schedules_), in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, None), donate_argnums=(0,))
  with sharding.activation_sharding(mesh):
    return step.lower(abstract_state, batch).compile(), forward_flops


def _forward_flops(model, model_config, batch) -> float:
  """The U-Net forward's FLOPs over the global batch, from XLA's count of the unsharded program
  (lowered, not compiled: no U-Net layer is scanned, so the count is exact)."""
  params = nn.meta.unbox(jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a),
                                        *model_config.example_inputs())["params"])
  strip = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  args = (jax.tree.map(strip, params), strip(batch["latents"]), strip(batch["timesteps"]),
          strip(batch["condition"]))
  cost = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c)).lower(*args
                                                                              ).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def compile_unet_for_topology(experiment_config, topology: str, program: str) -> dict[str, Any]:
  """The U-Net's step (frozen or fine-tuning) on a TPU topology: the report dict. Analytic
  FLOPs: forward x 3 with weight gradients, x 2 without (the backward through activations)."""
  generation, devices = topology_devices(topology)
  mesh = sharding.make_mesh(experiment_config.mesh.to_dict(), devices)
  start = time.time()
  compiled, forward_flops = compile_unet_step(experiment_config, mesh, program)
  model_config = build.config_from_dict(experiment_config.model.to_dict())
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      nn.meta.unbox(sharding.abstract_params(build.build(model_config), model_config))))
  return report(compiled, topology=topology, generation=generation, num_chips=len(devices),
                analytic_flops_per_step=forward_flops * (3 if program == "train_step" else 2),
                num_params=num_params, compile_s=time.time() - start, program=program,
                # Whether attention runs in the Pallas kernel (a Mosaic custom call on TPU).
                fused_attention="tpu_custom_call" in compiled.as_text(),
                weights="trained" if program == "train_step" else "frozen",
                global_batch=int(experiment_config.global_batch),
                latent_shape=[model_config.sample_size, model_config.sample_size,
                              model_config.in_channels],
                condition_shape=[model_config.condition_length,
                                 model_config.cross_attention_dim])
