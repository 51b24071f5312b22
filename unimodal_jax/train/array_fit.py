"""Train a model on in-memory arrays through the one loop (train/fit.py): the small models of
the tiny experiments (the semantic tokenizer, the pixel decoder, the pixel-VQ baseline, the
diffusion decoder), whose whole training set fits in memory. Batches are drawn in epochs
(data/array_batches.py), so the iterator state, and with it an exact resume, is a step count.
"""
from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import ml_collections


def fit_arrays(name, directory, model, model_config, meta, loss_fn, arrays, cfg, *, seed: int,
               init_seed: int, log, shown=()):
  """Train one model of this experiment through the one loop (train/fit.py) in `directory`:
  AdamW (the optimizer builder's, from `cfg`) over batches of `arrays` drawn in epochs,
  resumable, skipped when already complete, trained again (the old one moved aside) when `meta`
  (its config and provenance) changed. loss_fn(params, model_state, batch, rng) ->
  (loss, (metrics, model_state)). Returns (the trained variables, seconds spent training)."""
  from unimodal_jax import sharding
  from unimodal_jax.data import array_batches
  from unimodal_jax.train import fit, optimizer, state as state_lib, step as step_lib
  start = time.time()
  steps = int(cfg.steps)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  opt = dict(learning_rate=float(cfg.learning_rate), schedule="cosine",
             warmup_steps=min(int(cfg.max_warmup_steps), int(steps * cfg.warmup_fraction)),
             end_lr_ratio=float(cfg.end_lr_ratio), b1=float(cfg.b1), b2=float(cfg.b2),
             eps=float(cfg.eps), weight_decay=float(cfg.weight_decay),
             clip_grad_norm=float(cfg.clip_grad_norm))
  abstract_params = nn.meta.unbox(sharding.abstract_params(model, model_config))
  tx, schedules = optimizer.build(opt, abstract_params, steps)
  abstract_state, state_sh = state_lib.state_shardings(model, model_config, tx, mesh)
  batch_sh = sharding.batch_sharding(mesh, ndim=1)
  # Each step's key is key(7 * seed + step), as this experiment has always drawn it.
  train_step = jax.jit(
      step_lib.make_loss_step(loss_fn, tx, schedules,
                              step_rng=lambda s: jax.random.key(seed * 7 + s.step)),
      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=(0,))
  n = len(next(iter(arrays.values())))
  trainable = fit.Trainable(
      abstract_state=abstract_state,
      init_state=lambda: state_lib.init_state(model, model_config, tx, 0, state_sh,
                                              init_rng=jax.random.key(init_seed)),
      train_step=train_step,
      batches=array_batches.batches(arrays, array_batches.epoch_batches(
          n, int(cfg.batch_size), steps, seed)),
      batch_sharding=batch_sh, model_config=meta, config=cfg,
      items_per_step=int(cfg.batch_size), unit="ex", shown=shown,
      describe=f"training the {name} in {directory}",
      # Trained with another config (or on another tokenizer's output): trained again.
      run_identity=json.dumps(meta, sort_keys=True))
  fit_cfg = dict(cfg.to_dict(), eval_every=steps)
  _, state = fit.fit(trainable, ml_collections.ConfigDict(fit_cfg), directory,
                     log=lambda msg, *a, **k: log(f"{name}: {msg}"))
  return {"params": state.params, **state.model_state}, time.time() - start


__all__ = ["fit_arrays"]
