"""Model checkpoints on disk: an orbax CheckpointManager directory whose steps hold the items
`params` and `model_config` (training adds its own items beside them).

Converted Hugging Face weights are step 0 of such a directory, so `load_pretrained` reads a
converted checkpoint and a training workdir alike. Params are stored in the unscanned layout
(`layers_0`, `layers_1`, ...) or the scanned one (`layers` stacked on axis 0); loading converts
to whatever layout the model config asks for.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from unimodal_jax.models.decoder_config import DecoderConfig

PARAMS = "params"
MODEL_CONFIG = "model_config"
# Items that training adds beside them (see unimodal_jax/train/checkpointing.py).
OPT_STATE = "opt_state"
MODEL_STATE = "model_state"  # variable collections besides params (an EMA codebook's vq_stats)
TRAIN_META = "train_meta"
EXPERIMENT_CONFIG = "config"
DATA_ITERATOR = "data_iter"
TRAIN_SUBDIR = "checkpoints"  # a training workdir keeps its checkpoints here
_LAYER_KEY = re.compile(r"^layers_(\d+)$")


# ----------------------------------------------------------------------------- layouts


def is_scanned(params: dict) -> bool:
  return "layers" in params


def stack_layers(params: dict, num_layers: int, stack=np.stack) -> dict:
  """Unscanned -> scanned: layers_i subtrees stacked on a new leading axis."""
  layers = [params[f"layers_{i}"] for i in range(num_layers)]
  out = {k: v for k, v in params.items() if not _LAYER_KEY.match(k)}
  out["layers"] = jax.tree.map(lambda *xs: stack(xs), *layers)
  return out


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Scanned -> unscanned."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out


def to_layout(params: dict, config: DecoderConfig, stack=np.stack) -> dict:
  """Params in the layout `config.scan_layers` asks for, whatever layout they came in."""
  if config.scan_layers and not is_scanned(params):
    return stack_layers(params, config.num_layers, stack)
  if not config.scan_layers and is_scanned(params):
    return unstack_layers(params, config.num_layers)
  return params


# ----------------------------------------------------------------------------- save / load


def item_handlers() -> dict:
  """Handlers for every item a model or training checkpoint may hold."""
  standard, json_ = ocp.StandardCheckpointHandler, ocp.JsonCheckpointHandler
  return {PARAMS: standard(), OPT_STATE: standard(), TRAIN_META: standard(),
          MODEL_STATE: standard(),
          MODEL_CONFIG: json_(), EXPERIMENT_CONFIG: json_(), DATA_ITERATOR: json_()}


def resolve_directory(directory: str) -> str:
  """A training workdir keeps its checkpoints in `checkpoints/`; accept either."""
  directory = os.path.abspath(directory)
  sub = os.path.join(directory, TRAIN_SUBDIR)
  return sub if os.path.isdir(sub) else directory


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  """A CheckpointManager that knows how to read every item."""
  return ocp.CheckpointManager(
      directory, item_handlers=item_handlers(),
      options=ocp.CheckpointManagerOptions(**options) if options else None)


class _BoundedNumpyHandler(ocp.type_handlers.NumpyHandler):
  """Writes host (numpy / memory-mapped) arrays with at most `max_bytes` of them in flight.

  Orbax's NumpyHandler deep-copies every array and then writes all of them at once, which holds
  a full extra copy of the model; this subclass skips the copy (safe: `save_pretrained` waits for
  the write) and admits writes under a byte budget, so a conversion streams tensor by tensor.
  It overrides orbax's private `_open_and_write`, pinned by requirements.txt.
  """

  def __init__(self, max_bytes: int):
    super().__init__(deepcopy_host_arrays=False)
    self._max_bytes = max(1, int(max_bytes))
    self._in_flight = 0
    self._condition = None

  async def _open_and_write(self, value, tspec, ts_context):
    if self._condition is None:
      self._condition = asyncio.Condition()
    # Contiguous copy here, inside the budget, not up front for every tensor.
    nbytes = min(value.nbytes, self._max_bytes)
    async with self._condition:
      await self._condition.wait_for(lambda: self._in_flight + nbytes <= self._max_bytes)
      self._in_flight += nbytes
    try:
      # np.require keeps a 0-d array 0-d (np.ascontiguousarray makes it 1-d: a CLIP's scalar
      # logit scale failed to write).
      return await super()._open_and_write(np.require(value, requirements="C"), tspec,
                                           ts_context)
    finally:
      async with self._condition:
        self._in_flight -= nbytes
        self._condition.notify_all()


def _streaming_params_handler(concurrent_gb: float) -> ocp.PyTreeCheckpointHandler:
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, _BoundedNumpyHandler(int(concurrent_gb * 1e9))),
      *[(t, ocp.type_handlers.get_type_handler(t)) for t in (int, float, jax.Array)])
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save_pretrained(directory: str, params: dict, config: DecoderConfig, step: int = 0,
                    concurrent_gb: float = 1.0) -> None:
  """Write params (+ model config: a config object, or the dict a checkpoint stored) as `step`
  of an orbax CheckpointManager directory.

  Host arrays (numpy, including memory maps) stream to disk about `concurrent_gb` at a time.
  """
  directory = os.path.abspath(directory)
  host = all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
  handlers = {MODEL_CONFIG: ocp.JsonCheckpointHandler(),
              PARAMS: (_streaming_params_handler(concurrent_gb) if host
                       else ocp.StandardCheckpointHandler())}
  params_args = ocp.args.PyTreeSave(params) if host else ocp.args.StandardSave(params)
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    # orbax skips (returns False) a step that is not newer than the directory's latest; unchecked,
    # a retrained model would be dropped and the old one read back as if it were the new one.
    saved = manager.save(step, args=ocp.args.Composite(
        params=params_args, model_config=ocp.args.JsonSave(
            config.to_dict() if hasattr(config, "to_dict") else dict(config))))
    manager.wait_until_finished()
  if not saved:
    raise FileExistsError(f"{directory}: holds step {manager.latest_step()} already, so step "
                          f"{step} was not written; move the directory aside (move_aside) or "
                          "pick a new one")


def move_aside(directory: str) -> str:
  """Rename `directory` to the first free `<directory>.stale-<n>` (kept, not deleted), so a model
  of another config can be written in its place. Returns the new path."""
  n = 1
  while os.path.exists(f"{directory}.stale-{n}"):
    n += 1
  os.rename(directory, f"{directory}.stale-{n}")
  return f"{directory}.stale-{n}"


def latest_step(directory: str) -> int:
  directory = resolve_directory(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no such checkpoint directory")
  with _manager(directory, create=False) as manager:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory}: no checkpoint steps found (expected an orbax "
                            "CheckpointManager directory written by convert_hf.py or training)")
  return step


def resolve_model_directory(directory: str) -> str:
  """The checkpoint directory of what `directory` names: a pipeline workdir (it has phases.json)
  gives its last ILLUME stage that holds checkpoints; a training workdir its `checkpoints/`."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, "phases.json")):
    stages = [os.path.join(directory, f"stage{i}") for i in (3, 2, 1)]
    trained = [d for d in stages if os.path.isdir(os.path.join(d, TRAIN_SUBDIR))]
    if not trained:
      raise FileNotFoundError(f"{directory}: a pipeline workdir with no trained stage yet "
                              "(stage1..3/checkpoints are missing)")
    directory = trained[0]
  return resolve_directory(directory)


def read_model_config(directory: str, step: int | None = None) -> dict:
  """The saved model_config dict of a checkpoint (any kind)."""
  directory = resolve_model_directory(directory)
  step = latest_step(directory) if step is None else step
  path = os.path.join(directory, str(step), MODEL_CONFIG, "metadata")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  with _manager(directory, create=False) as manager:
    return manager.restore(step, args=ocp.args.Composite(model_config=ocp.args.JsonRestore()))[
        MODEL_CONFIG]


def load_model_config(directory: str, step: int | None = None):
  """The config object of a checkpoint, of whatever kind it says (models/build.py)."""
  from unimodal_jax.models import build
  return build.config_from_dict(read_model_config(directory, step))


def _cast(params, dtype):
  return jax.tree.map(lambda x: x.astype(dtype) if x.dtype != dtype else x, params)


def load_pretrained(directory: str, *, step: int | None = None, mesh=None,
                    config_overrides: dict[str, Any] | None = None):
  """`model, params = load_pretrained(dir)` for every model kind (models/build.py): a decoder,
  ILLUME, a ViT or CLIP, the semantic tokenizer, the pixel decoder, and the kinds registered
  later. The saved model_config's `kind` decides.

  `dir` is a converted checkpoint, a training workdir (its latest step unless `step`), or a
  pipeline workdir (its last trained ILLUME stage). `config_overrides` changes numerics/layout
  fields (e.g. `{'dtype': 'bfloat16', 'scan_layers': True}`); params are cast to the config's
  param_dtype. With `mesh` (decoders and ILLUME), params are restored straight onto it, sharded
  by the logical-axis rules; otherwise on the default device. For a kind whose checkpoint keeps
  other variable collections (the EMA tokenizer's `vq_stats`), `params` is the whole variables
  dict: call `model.apply(params, ...)`.
  """
  from unimodal_jax.models import build
  directory = resolve_model_directory(directory)
  step = latest_step(directory) if step is None else step
  stored_config = read_model_config(directory, step)
  kind = build.kind_of(stored_config)
  config = build.config_from_dict(stored_config)
  if config_overrides:
    config = config.replace(**config_overrides)
  model = build.build(config)
  llm = build.llm_config(config)
  layered = hasattr(llm, "scan_layers")  # a decoder, alone or inside ILLUME

  with _manager(directory, create=False) as manager:
    stored = manager.item_metadata(step)[PARAMS]
    # Newer orbax wraps the metadata tree in an object with `.tree`; older returns it bare.
    stored_tree = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), stored.tree
                               if hasattr(stored, "tree") else stored)
    if mesh is not None:
      if not layered:
        raise ValueError(f"load_pretrained(mesh=...) shards decoders and ILLUME; {directory} "
                         f"holds a {stored_config.get('kind')!r} model: load it without a mesh")
      from unimodal_jax import sharding
      stored_llm = llm.replace(scan_layers=is_scanned(
          stored_tree["llm"] if llm is not config else stored_tree))
      stored_model_config = config.replace(llm=stored_llm) if llm is not config else stored_llm
      shardings = sharding.param_shardings(sharding.abstract_params(
          build.build(stored_model_config), stored_model_config), mesh)
    else:
      device_sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device_sharding, stored_tree)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          stored_tree, shardings)
    params = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target)))[PARAMS]
    if kind.variables and "params" not in params:  # a training checkpoint: params + model_state
      params = {"params": params, **_restore_item(manager, step, MODEL_STATE)}

  if not layered:
    dtype = getattr(config, "param_dtype", None)
    if dtype and not kind.variables:
      params = _cast(params, jnp.dtype(dtype))
    return model, params
  params = _cast(params, llm.jnp_param_dtype)
  if llm is config:
    params = to_layout(params, config, stack=jnp.stack)
  else:
    params = {**params, "llm": to_layout(params["llm"], llm, stack=jnp.stack)}
  if mesh is not None:
    from unimodal_jax import sharding
    params = jax.device_put(params, sharding.param_shardings(
        sharding.abstract_params(model, config), mesh))
  return model, params


def _restore_item(manager, step: int, item: str):
  """An item of a step onto the default device, or {} when the step has none."""
  if not os.path.isdir(os.path.join(manager.directory, str(step), item)):
    return {}
  stored = manager.item_metadata(step)[item]
  stored = stored.tree if hasattr(stored, "tree") else stored
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
  return manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(target)}))[item]


def restore_params(directory: str, step: int | None = None) -> tuple[dict, dict]:
  """(the stored tree on the default device, the model_config dict as saved): the raw form of
  load_pretrained, for callers that read the saved provenance or the tree as it is."""
  directory = resolve_directory(directory)
  step = latest_step(directory) if step is None else step
  with _manager(directory, create=False) as manager:
    stored = manager.item_metadata(step)[PARAMS]
    stored = stored.tree if hasattr(stored, "tree") else stored
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          stored)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target), model_config=ocp.args.JsonRestore()))
  return restored[PARAMS], restored[MODEL_CONFIG]
