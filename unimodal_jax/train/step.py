"""The jitted train and eval steps of every model the loop trains.

An LLM step (`make_train_step`): forward + backward over `grad_accum_steps` microbatches (summed
exactly), then the update. Any other model's step (`make_loss_step`): its loss function's
forward + backward, then the update. The update (`apply_gradients`) is one for all: global norm,
optimizer update per parameter group, and the non-finite policy: if the loss or the gradient norm
is NaN/inf the update is skipped (params, optimizer state and model state kept) and counted.
Frozen parameters are wrapped in stop_gradient, so XLA never computes their weight gradients.
A model that draws (DreamLLM) returns its diffusion sums beside the logits, and takes its random
streams (`model.RNGS`) from the state's key folded with the step (and the microbatch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unimodal_jax.models import build
from unimodal_jax.train import losses
from unimodal_jax.train.state import TrainState


def _model_inputs(model, batch):
  return {k: batch[k] for k in build.batch_inputs(model) if k in batch}


def options(train_config) -> dict:
  """make_train_step's keyword options from a config's `train` section (one reading for the
  loop, the AOT compiler and the benches)."""
  get = train_config.get
  return {"grad_accum_steps": int(get("grad_accum_steps", 1)),
          "z_loss_weight": float(get("z_loss_weight", 0.0)),
          "lm_loss_weight": float(get("lm_loss_weight", 1.0)),
          "diffusion_loss_weight": float(get("diffusion_loss_weight", 1.0))}


def loss_sums(model, params, batch, rng, z_loss_weight: float = 0.0) -> dict:
  """One forward pass's loss sums: the LM's (losses.loss_sums) and the model's own (DreamLLM's
  diffusion sums), its random streams drawn from `rng`."""
  names = getattr(model, "RNGS", ())
  rngs = {n: jax.random.fold_in(rng, i) for i, n in enumerate(names)} if names else None
  out = model.apply({"params": params}, batch["inputs"], **_model_inputs(model, batch),
                    rngs=rngs)
  logits, extra = out if isinstance(out, tuple) else (out, {})
  return {**losses.loss_sums(logits, batch, z_loss_weight), **extra}


def _dream_images(batch):
  ids = batch.get("dream_image_segment_ids")
  return None if ids is None else jnp.sum((ids > 0).astype(jnp.float32))


def _microbatches(batch, n: int):
  """[B, ...] -> [n, B/n, ...] taking every n-th row, so each microbatch keeps the batch's
  sharding over devices (a contiguous split would put a microbatch on a few devices only)."""
  def split(x):
    return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def apply_gradients(state: TrainState, grads, loss, tx, model_state=None):
  """(the state after one update, its metrics), skipping a non-finite update: params, optimizer
  state and model state stay as they were, and the skip is counted."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  model_state = state.model_state if model_state is None else model_state

  # A branch, not a select over the updated trees: the update compiles as it would without the
  # policy (bit for bit), and a skipped step computes no update at all.
  def update(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, model_state

  def skip(_):
    return state.params, state.opt_state, state.model_state

  params, opt_state, new_model_state = jax.lax.cond(finite, update, skip, None)
  skipped = (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=new_model_state,
      nonfinite_steps=state.nonfinite_steps + skipped,
      consecutive_nonfinite=(state.consecutive_nonfinite + 1) * skipped)
  return new_state, {"grad_norm": grad_norm, "finite": finite,
                     "nonfinite_steps": new_state.nonfinite_steps,
                     "consecutive_nonfinite": new_state.consecutive_nonfinite}


def make_loss_step(loss_fn, tx, schedules, *, step_rng=None):
  """train_step(state, batch) -> (state, metrics) for a model trained on its own loss:
  loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new model_state)).
  step_rng(state) gives the step's random key (default: the state's key folded with the step)."""
  if step_rng is None:
    step_rng = lambda s: jax.random.fold_in(jax.random.wrap_key_data(s.rng), s.step)

  def train_step(state: TrainState, batch):
    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, step_rng(state))
    new_state, update_metrics = apply_gradients(state, grads, loss, tx, model_state)
    metrics = {**metrics, "loss": loss, **update_metrics}
    for name, sched in schedules.items():
      metrics[f"lr/{name}"] = sched(state.step)
    return new_state, metrics

  return train_step


def make_train_step(model, tx, frozen, schedules, *, grad_accum_steps: int = 1,
                    z_loss_weight: float = 0.0, lm_loss_weight: float = 1.0,
                    diffusion_loss_weight: float = 1.0):
  """train_step(state, batch) -> (state, metrics). The loss weights apply to a model that draws
  (losses.objective); an LLM's loss is its cross entropy."""
  weights = dict(lm_weight=lm_loss_weight, diffusion_weight=diffusion_loss_weight)

  def sums_and_grads(params, batch, totals, rng):
    def objective(p):
      p = jax.tree.map(lambda x, f: jax.lax.stop_gradient(x) if f else x, p, frozen)
      sums = loss_sums(model, p, batch, rng, z_loss_weight)
      return losses.objective(sums, totals[0], z_loss_weight, total_dream_images=totals[1],
                              **weights), sums
    (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return sums, grads

  def train_step(state: TrainState, batch):
    mask = batch.get("target_mask")
    total_weight = (jnp.sum(mask.astype(jnp.float32)) if mask is not None
                    else jnp.asarray(batch["targets"].size, jnp.float32))
    totals = (total_weight, _dream_images(batch))
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if grad_accum_steps == 1:
      sums, grads = sums_and_grads(state.params, batch, totals, rng)
    else:
      micro = _microbatches(batch, grad_accum_steps)
      first = jax.tree.map(lambda x: x[0], micro)
      sums_shape = jax.eval_shape(
          lambda: sums_and_grads(state.params, first, totals, rng)[0])
      init = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape),
              jax.tree.map(jnp.zeros_like, state.params))

      def body(carry, xs):
        i, mb = xs
        s, g = sums_and_grads(state.params, mb, totals, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (s, g)), None

      (sums, grads), _ = jax.lax.scan(body, init, (jnp.arange(grad_accum_steps), micro))

    loss = losses.objective(sums, total_weight, z_loss_weight, total_dream_images=totals[1],
                            **weights)
    new_state, update_metrics = apply_gradients(state, grads, loss, tx)
    metrics = losses.summarize(sums, z_loss_weight, **weights)
    metrics.update(update_metrics)
    for name, sched in schedules.items():
      metrics[f"lr/{name}"] = sched(state.step)
    return new_state, metrics

  return train_step


def make_eval_step(model, z_loss_weight: float = 0.0, seed: int = 0):
  """eval_step(params, batch) -> loss sums (add them over batches, then losses.summarize). A
  model's random streams (DreamLLM's noise) come from a fixed key: every evaluation of the same
  params and batch gives the same figures."""
  def eval_step(params, batch):
    return loss_sums(model, params, batch, jax.random.key(seed), z_loss_weight)
  return eval_step
