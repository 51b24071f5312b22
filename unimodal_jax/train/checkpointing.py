"""Training checkpoints: one orbax CheckpointManager in `WORKDIR/checkpoints`, async saves,
keep-N. Each step holds params, optimizer state, the other model variables (when the model has
any), train meta (step, RNG, non-finite counters), the model config, the experiment config and
the data iterator's state, so restarting the same
command resumes exactly. `load_pretrained(WORKDIR)` reads the params of the latest step.

Restores go straight onto the current mesh (shardings of the abstract state), so a run saved on
8 devices resumes on 1 or 4.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from unimodal_jax import checkpoints as ckpt
from unimodal_jax.train.state import TrainState


class TrainCheckpointer:

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), ckpt.TRAIN_SUBDIR)
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=ckpt.item_handlers(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, *, model_config: dict, config: dict,
           data_state: dict | None, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    meta = {"step": state.step, "rng": state.rng, "nonfinite_steps": state.nonfinite_steps,
            "consecutive_nonfinite": state.consecutive_nonfinite}
    items = {}
    if jax.tree.leaves(state.model_state):
      items[ckpt.MODEL_STATE] = ocp.args.StandardSave(state.model_state)
    return self.manager.save(step, force=force, args=ocp.args.Composite(**items, **{
        ckpt.PARAMS: ocp.args.StandardSave(state.params),
        ckpt.OPT_STATE: ocp.args.StandardSave(state.opt_state),
        ckpt.TRAIN_META: ocp.args.StandardSave(meta),
        ckpt.MODEL_CONFIG: ocp.args.JsonSave(model_config),
        ckpt.EXPERIMENT_CONFIG: ocp.args.JsonSave(config),
        ckpt.DATA_ITERATOR: ocp.args.JsonSave(data_state or {}),
    }))

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, dict[str, Any]]:
    """(state on the abstract state's shardings, data iterator state) of `step` (latest)."""
    step = self.latest_step() if step is None else step
    meta_abstract = {"step": abstract_state.step, "rng": abstract_state.rng,
                     "nonfinite_steps": abstract_state.nonfinite_steps,
                     "consecutive_nonfinite": abstract_state.consecutive_nonfinite}
    items = {}
    if jax.tree.leaves(abstract_state.model_state):
      items[ckpt.MODEL_STATE] = ocp.args.StandardRestore(abstract_state.model_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items, **{
        ckpt.PARAMS: ocp.args.StandardRestore(abstract_state.params),
        ckpt.OPT_STATE: ocp.args.StandardRestore(abstract_state.opt_state),
        ckpt.TRAIN_META: ocp.args.StandardRestore(meta_abstract),
        ckpt.DATA_ITERATOR: ocp.args.JsonRestore(),
    }))
    meta = restored[ckpt.TRAIN_META]
    state = TrainState(step=meta["step"], params=restored[ckpt.PARAMS],
                       opt_state=restored[ckpt.OPT_STATE], rng=meta["rng"],
                       nonfinite_steps=meta["nonfinite_steps"],
                       consecutive_nonfinite=meta["consecutive_nonfinite"],
                       model_state=restored.get(ckpt.MODEL_STATE, {}) if items else {})
    return state, restored[ckpt.DATA_ITERATOR]

  def saved_config(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), ckpt.EXPERIMENT_CONFIG, "metadata")
    with open(path) as f:
      return json.load(f)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
