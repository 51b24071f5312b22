"""The one training loop. Every model trains through `fit`: the LLM stages (train/loop.py), the
CLIP (train/contrastive.py), the semantic tokenizer, its pixel decoder and the pixel-VQ baseline
(train/tokenizer.py). They share:

- resume: the latest orbax checkpoint in WORKDIR/checkpoints (params, optimizer state, other
  model variables, step, RNG, counters, and the grain data iterator's state), so a run killed at
  any point (SIGKILL included) restarts with the very next batch, bit for bit;
- the non-finite policy: a step whose loss or gradient is NaN/inf is skipped (the step does it)
  and counted; after `train.max_consecutive_nonfinite` in a row the loop saves a checkpoint and
  stops with NonFiniteStop;
- the progress line, TensorBoard scalars and WORKDIR/results.json;
- a completed run (results.json says so, at the same step) is not trained again;
- with a `run_identity`, a workdir that holds a run of another identity (its config or its data
  changed since) is moved aside to WORKDIR.stale-N (kept, not deleted) and training starts over,
  where resuming it would mix two runs.

What differs per model comes in a `Trainable`: its state and step, its batches, its evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from unimodal_jax.train import metrics as metrics_lib
from unimodal_jax.train import results as results_lib
from unimodal_jax.train.checkpointing import TrainCheckpointer
from unimodal_jax.train.state import TrainState


class NonFiniteStop(RuntimeError):
  """Too many non-finite steps in a row: a checkpoint was saved and the run stopped."""


@dataclasses.dataclass
class Trainable:
  """One model's training, as `fit` runs it."""
  abstract_state: TrainState  # with shardings attached (restore target)
  init_state: Callable[[], TrainState]  # a fresh state, when there is no checkpoint
  train_step: Callable  # jitted (state, global batch) -> (state, metrics)
  batches: Any  # next() -> this process's batch (numpy dict); get_state() / set_state()
  batch_sharding: Any  # NamedSharding of every batch field
  model_config: dict  # saved in each checkpoint (load_pretrained reads it)
  config: dict  # the experiment config, saved beside it
  evaluate: Callable[[Any], dict] | None = None  # params -> held-out figures
  check_batch: Callable[[dict], None] | None = None  # raises on the first batch if it is wrong
  items_per_step: int = 0  # tokens (LLM) or examples per step, for the progress line's rate
  unit: str = "tok"
  flops_per_item: float = 0.0  # for MFU (0: not reported)
  shown: tuple[str, ...] = ()  # metrics the progress line shows besides loss and gradient norm
  eval_note: Callable[[dict], str] = lambda m: ""
  extras: Callable[[], dict] = dict  # the model's own figures for results.json
  describe: str = ""  # one line at the start: what trains
  # What makes a checkpoint in the workdir this run's own (see the module docstring); None: any
  # checkpoint there is resumed (the command line's way: raise train.steps to train further).
  run_identity: str | None = None
  # Entered around the steps (an LLM's logical activation constraints bind to its mesh there).
  step_context: Callable[[], Any] = contextlib.nullcontext


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
      else dict(config)


IDENTITY_FILE = "run_identity.txt"


def _claim(workdir: str, identity: str | None, log) -> None:
  """Make `workdir` this run's: one holding a run of another identity is moved aside."""
  from unimodal_jax import checkpoints
  path = os.path.join(workdir, IDENTITY_FILE)
  if identity is not None and os.path.isdir(workdir) and os.listdir(workdir):
    previous = None
    if os.path.exists(path):
      with open(path) as f:
        previous = f.read()
    if previous != identity:
      log(f"{workdir} holds a run of another config; moved it to "
          f"{checkpoints.move_aside(workdir)}; training from the start")
  os.makedirs(workdir, exist_ok=True)
  if identity is not None and not os.path.exists(path):
    with open(path, "w") as f:
      f.write(identity)


def fit(trainable: Trainable, train_config, workdir: str, *,
        log=metrics_lib.print_flushed) -> tuple[dict, TrainState]:
  """Train to `train_config.steps` in `workdir`: (the run's figures, also written to
  results.json: status, step, last train metrics, loss history, eval figures, rates, wall time;
  the final state)."""
  wall_start = time.time()
  main = jax.process_index() == 0
  log = log if main else (lambda *a, **k: None)
  t = train_config
  total_steps = int(t.steps)
  _claim(workdir, trainable.run_identity, log)
  checkpointer = TrainCheckpointer(workdir, keep=int(t.keep_checkpoints),
                                   async_save=bool(t.get("async_checkpointing", True)))
  batches = trainable.batches
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(trainable.abstract_state)
    if data_state:
      batches.set_state(data_state)
    log(f"resumed from {checkpointer.directory} at step {latest}")
  else:
    state = trainable.init_state()

  start_step = int(jax.device_get(state.step))
  results_path = os.path.join(workdir, "results.json")
  if start_step >= total_steps and os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
    if previous.get("step") == start_step and previous.get("status") == "completed":
      checkpointer.close()
      log(f"{workdir} already holds a completed run of {start_step} steps; results in "
          f"{results_path} (raise the number of steps to train further)")
      return previous, state

  batch_sh = trainable.batch_sharding

  def to_global(batch):
    return {k: jax.make_array_from_process_local_data(batch_sh, np.asarray(v))
            for k, v in batch.items()}

  peak, peak_source = metrics_lib.peak_flops_per_device(float(t.get("peak_flops_per_device", 0)))
  progress = metrics_lib.Progress(total_steps, start_step, trainable.flops_per_item, peak,
                                  jax.device_count(), enabled=main, log=log,
                                  unit=trainable.unit, shown=trainable.shown)
  tensorboard = metrics_lib.TensorBoard(workdir, enabled=main)
  log(f"{trainable.describe}{'; ' if trainable.describe else ''}steps {start_step} -> "
      f"{total_steps}" + (f"; MFU against {peak / 1e9:,.0f} GFLOP/s per device ({peak_source})"
                          if trainable.flops_per_item else ""))

  config_dict = _config_dict(trainable.config)
  rate_name = "tokens_per_s" if trainable.unit == "tok" else f"{trainable.unit}_per_s"
  last_metrics, last_rates, eval_metrics, history = {}, {}, {}, []
  stop_message = None

  def save(force=False):
    checkpointer.save(state, model_config=trainable.model_config, config=config_dict,
                      data_state=batches.get_state(), force=force)

  def evaluate():
    if trainable.evaluate is None:
      return {}
    return trainable.evaluate(state.params)

  with trainable.step_context():
    for step in range(start_step, total_steps):
      local = next(batches)
      if step == start_step and trainable.check_batch is not None:
        trainable.check_batch(local)
      state, step_metrics = trainable.train_step(state, to_global(local))
      progress.add(trainable.items_per_step)
      done = step + 1
      consecutive = int(step_metrics["consecutive_nonfinite"])
      # The first step too: its loss is the starting point, its time the compile.
      if (done % int(t.log_every) == 0 or done in (start_step + 1, total_steps)
          or consecutive):
        last_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        last_rates = progress.report(done, last_metrics)
        last_rates[rate_name] = last_rates.pop("items_per_s")
        history.append([done, last_metrics["loss"]])
        tensorboard.scalars(done, {**last_metrics, **last_rates}, prefix="train/")
      if consecutive >= int(t.max_consecutive_nonfinite):
        save(force=True)
        stop_message = (f"stopped at step {done}: {consecutive} non-finite steps in a row (loss "
                        f"or gradient NaN/inf; updates skipped). Checkpoint saved in "
                        f"{checkpointer.directory}; lower the learning rate or check the data, "
                        f"then rerun to resume.")
        break
      if done % int(t.eval_every) == 0 or done == total_steps:
        eval_metrics = evaluate()
        tensorboard.scalars(done, eval_metrics, prefix="eval/")
        if eval_metrics:
          log(f"eval at step {done}: " + trainable.eval_note(eval_metrics))
      if done % int(t.checkpoint_every) == 0 or done == total_steps:
        save()
  if start_step >= total_steps:  # resumed at the end without results: evaluate once
    eval_metrics = evaluate()
  checkpointer.close()
  tensorboard.close()

  results = {
      "status": "stopped_nonfinite" if stop_message else "completed",
      "step": int(jax.device_get(state.step)),
      "train": last_metrics,
      "loss_history": history,
      "eval": eval_metrics,
      rate_name: last_rates.get(rate_name),
      "mfu": last_rates.get("mfu") if trainable.flops_per_item else None,
      "peak_flops_per_device": peak,
      "wall_time_s": time.time() - wall_start,
      "num_processes": jax.process_count(),
      **trainable.extras(),
  }
  if main:
    results_lib.write_json(results_path, results)
  if stop_message:
    log(stop_message)
    raise NonFiniteStop(stop_message)
  return results, state
