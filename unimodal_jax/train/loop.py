"""The training loop: mesh, model, optimizer and state, resume, the jitted sharded step, eval,
metrics, checkpoints and the non-finite stop policy.

    results = run(config, workdir)

Restarting with the same workdir resumes from the latest checkpoint (params, optimizer, step,
RNG and the data iterator), so the run continues with the very next batch.
"""
from __future__ import annotations

import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax.train import results as results_lib
from unimodal_jax import sharding
from unimodal_jax.models import build
from unimodal_jax.train import batch_spec, config_checks, data_setup, initialization, losses
from unimodal_jax.train import optimizer
from unimodal_jax.train import metrics as metrics_lib
from unimodal_jax.train.checkpointing import TrainCheckpointer
from unimodal_jax.train.state import init_state, state_shardings
from unimodal_jax.train.step import make_eval_step, make_train_step

EXIT_NONFINITE = 3


class NonFiniteStop(RuntimeError):
  """Too many non-finite steps in a row: a checkpoint was saved and the run stopped."""


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def run(config, workdir: str, *, log=metrics_lib.print_flushed) -> dict:
  """Train as `config` says, in `workdir`; returns (and writes to results.json) final metrics."""
  wall_start = time.time()
  main = jax.process_index() == 0
  log = log if main else (lambda *a, **k: None)
  config_checks.check_fields(config)
  model_config = build.config_from_dict(config.model.to_dict())
  mesh = sharding.make_mesh(config.mesh.to_dict())
  config_checks.check_batch(config, mesh, jax.process_count())
  train_cfg = config.train
  total_steps = int(train_cfg.steps)
  os.makedirs(workdir, exist_ok=True)

  config_checks.check_image_size(config, model_config)
  spec = batch_spec.batch_spec(config)
  model = build.build(model_config)
  abstract_params = nn.meta.unbox(sharding.abstract_params(model, model_config))
  opt_cfg = config.optimizer.to_dict()
  tx, schedules = optimizer.build(opt_cfg, abstract_params, total_steps)
  frozen = optimizer.frozen_mask(abstract_params, optimizer.parse_groups(opt_cfg.get("groups")))
  abstract_state, state_sh = state_shardings(model, model_config, tx, mesh)

  data = data_setup.build(config, workdir, log)
  if model_config.vocab_size < data.vocab_size:
    raise ValueError(f"config.model.vocab_size={model_config.vocab_size} is smaller than the "
                     f"tokenizer's {data.vocab_size} tokens")

  checkpointer = TrainCheckpointer(workdir, keep=int(train_cfg.keep_checkpoints),
                                   async_save=bool(train_cfg.get("async_checkpointing", True)))
  train_iter = data.train_iter
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(abstract_state)
    if data_state:
      train_iter.set_state(data_state)
    log(f"resumed from {checkpointer.directory} at step {latest}")
  else:
    params = initialization.initial_params(config, model, model_config, abstract_params, mesh,
                                           log)
    state = init_state(model, tx, int(train_cfg.seed), state_sh,
                       jnp.zeros((1, 8), jnp.int32), params=params)

  start_step = int(jax.device_get(state.step))
  results_path = os.path.join(workdir, "results.json")
  if start_step >= total_steps and os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
    if previous.get("step") == start_step and previous.get("status") == "completed":
      checkpointer.close()
      log(f"{workdir} already holds a completed run of {start_step} steps; results in "
          f"{results_path} (raise --config.train.steps to train further)")
      return previous

  batch_sh = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      make_train_step(model, tx, frozen, schedules,
                      grad_accum_steps=int(train_cfg.get("grad_accum_steps", 1)),
                      z_loss_weight=float(train_cfg.get("z_loss_weight", 0.0))),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=(0,))
  eval_fn = jax.jit(make_eval_step(model), in_shardings=(state_sh.params, batch_sh))

  def to_global(batch):
    return {k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
            for k, v in batch.items()}

  def checked(batch, where):
    batch_spec.check_local_batch(batch, spec, jax.process_count(), where)
    return batch

  eval_set = [to_global(checked(b, "config.data.eval_sources")) for b in data.eval_batches]

  def evaluate(params) -> dict:
    if not eval_set:
      return {}
    total = None
    for b in eval_set:
      sums = eval_fn(params, b)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return {k: float(v) for k, v in jax.device_get(losses.summarize(total)).items()}

  peak, peak_source = metrics_lib.peak_flops_per_device(
      float(train_cfg.get("peak_flops_per_device", 0.0)))
  flops_per_token = model_config.flops_per_token(config.seq_len)
  progress = metrics_lib.Progress(total_steps, start_step, flops_per_token, peak,
                                  jax.device_count(), enabled=main, log=log)
  tensorboard = metrics_lib.TensorBoard(workdir, enabled=main)
  log(f"training {model_config.num_params() / 1e6:.2f}M params on mesh {dict(mesh.shape)}, "
      f"batch {config.global_batch} x {config.seq_len}, steps {start_step} -> {total_steps}; "
      f"MFU against {peak / 1e9:,.0f} GFLOP/s per device ({peak_source})")

  model_config_dict, config_dict = model_config.to_dict(), _config_dict(config)
  tokens_per_step = config.global_batch * config.seq_len
  last_metrics, last_rates, eval_metrics, history = {}, {}, {}, []
  stop_message = None

  def save(force=False):
    checkpointer.save(state, model_config=model_config_dict, config=config_dict,
                      data_state=train_iter.get_state(), force=force)

  with sharding.activation_sharding(mesh):
    for step in range(start_step, total_steps):
      local = next(train_iter)
      if step == start_step:  # the step is compiled for the spec's fields (aot.py compiles it too)
        checked(local, "config.data")
      batch = to_global(local)
      state, step_metrics = step_fn(state, batch)
      progress.add_tokens(tokens_per_step)
      done = step + 1
      consecutive = int(step_metrics["consecutive_nonfinite"])
      if done % int(train_cfg.log_every) == 0 or done == total_steps or consecutive:
        last_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        last_rates = progress.report(done, last_metrics)
        history.append([done, last_metrics["loss"]])
        tensorboard.scalars(done, {**last_metrics, **last_rates}, prefix="train/")
      if consecutive >= int(train_cfg.max_consecutive_nonfinite):
        save(force=True)
        stop_message = (f"stopped at step {done}: {consecutive} non-finite steps in a row (loss "
                        f"or gradient NaN/inf; updates skipped). Checkpoint saved in "
                        f"{checkpointer.directory}; lower optimizer.learning_rate or check the "
                        f"data, then rerun to resume.")
        break
      if done % int(train_cfg.eval_every) == 0 or done == total_steps:
        eval_metrics = evaluate(state.params)
        tensorboard.scalars(done, eval_metrics, prefix="eval/")
        if eval_metrics:
          log(f"eval at step {done}: held-out loss {eval_metrics['loss']:.4f}"
              f"{data.eval_note(eval_metrics)}")
      if done % int(train_cfg.checkpoint_every) == 0 or done == total_steps:
        save()
  if start_step >= total_steps:  # resumed at the end without results: evaluate once
    eval_metrics = evaluate(state.params)
  checkpointer.close()
  tensorboard.close()

  final_step = int(jax.device_get(state.step))
  results = {
      "status": "stopped_nonfinite" if stop_message else "completed",
      "step": final_step,
      "train": last_metrics,
      "loss_history": history,
      "eval": eval_metrics,
      **data.extras(),
      "tokens_per_s": last_rates.get("tokens_per_s"),
      "mfu": last_rates.get("mfu"),
      "peak_flops_per_device": peak,
      "num_params": model_config.num_params(),
      "wall_time_s": time.time() - wall_start,
      "mesh": dict(mesh.shape),
      "num_processes": jax.process_count(),
  }
  if main:
    results_lib.write_json(results_path, results)
  if stop_message:
    log(stop_message)
    raise NonFiniteStop(stop_message)
  return results
