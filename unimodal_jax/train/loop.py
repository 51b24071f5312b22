"""An LLM's training run (a decoder or ILLUME) from an experiment config: mesh, model, optimizer
groups, sharded state, data, the jitted step, held-out eval; the loop itself is train/fit.py.

    results = run(config, workdir)

Restarting with the same workdir resumes from the latest checkpoint (params, optimizer, step,
RNG and the data iterator), so the run continues with the very next batch.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import sharding
from unimodal_jax.models import build
from unimodal_jax.train import batch_spec, config_checks, data_setup, fit, initialization
from unimodal_jax.train import losses, optimizer
from unimodal_jax.train import metrics as metrics_lib
from unimodal_jax.train.state import init_state, state_shardings
from unimodal_jax.train.step import make_eval_step, make_train_step
from unimodal_jax.train.step import options as step_options

EXIT_NONFINITE = 3
NonFiniteStop = fit.NonFiniteStop


def run(config, workdir: str, *, log=metrics_lib.print_flushed,
        run_identity: str | None = None) -> dict:
  """Train as `config` says, in `workdir`; returns (and writes to results.json) final metrics.
  `run_identity`: see fit.Trainable (the main job's stages pass their config's fingerprint)."""
  main = jax.process_index() == 0
  log = log if main else (lambda *a, **k: None)
  config_checks.check_fields(config)
  model_config = build.config_from_dict(config.model.to_dict())
  mesh = sharding.make_mesh(config.mesh.to_dict())
  config_checks.check_batch(config, mesh, jax.process_count())
  config_checks.check_image_size(config, model_config)
  train_cfg = config.train
  total_steps = int(train_cfg.steps)
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

  def fresh_state():
    params = initialization.initial_params(config, model, model_config, abstract_params, mesh,
                                           log)
    return init_state(model, model_config, tx, int(train_cfg.seed), state_sh, params=params)

  batch_sh = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      make_train_step(model, tx, frozen, schedules, **step_options(train_cfg)),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=(0,))
  eval_fn = jax.jit(make_eval_step(model), in_shardings=(state_sh.params, batch_sh))

  def checked(batch, where):
    batch_spec.check_local_batch(batch, spec, jax.process_count(), where)
    return batch

  eval_set = [{k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
               for k, v in checked(b, "config.data.eval_sources").items()}
              for b in data.eval_batches]

  def evaluate(params) -> dict:
    if not eval_set:
      return {}
    total = None
    for b in eval_set:
      sums = eval_fn(params, b)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    opts = step_options(train_cfg)
    summary = losses.summarize(total, opts["z_loss_weight"], lm_weight=opts["lm_loss_weight"],
                               diffusion_weight=opts["diffusion_loss_weight"])
    return {k: float(v) for k, v in jax.device_get(summary).items()}

  trainable = fit.Trainable(
      abstract_state=abstract_state, init_state=fresh_state, train_step=step_fn,
      batches=data.train_iter, batch_sharding=batch_sh, model_config=model_config.to_dict(),
      config=config, evaluate=evaluate,
      # The step is compiled for the spec's fields (aot.py compiles the same one for pods).
      check_batch=lambda b: checked(b, "config.data"),
      items_per_step=config.global_batch * config.seq_len, unit="tok",
      flops_per_item=model_config.flops_per_token(config.seq_len),
      eval_note=lambda m: f"held-out loss {m['loss']:.4f}{data.eval_note(m)}",
      describe=(f"training {model_config.num_params() / 1e6:.2f}M params on mesh "
                f"{dict(mesh.shape)}, batch {config.global_batch} x {config.seq_len}"),
      step_context=lambda: sharding.activation_sharding(mesh), run_identity=run_identity,
      extras=lambda: {**data.extras(), "num_params": model_config.num_params(),
                      "mesh": dict(mesh.shape)})
  results, _ = fit.fit(trainable, train_cfg, workdir, log=log)
  return results
