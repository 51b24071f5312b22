"""The train state (params, optimizer state, other model variables, step, RNG, non-finite
counters) and its shardings, for every model kind the loop trains."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from unimodal_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: updates attempted so far
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data, so checkpoints hold plain arrays
  nonfinite_steps: jax.Array  # int32 []: skipped updates in total
  consecutive_nonfinite: jax.Array  # int32 []: skipped in a row, up to now
  # Variable collections other than params that training updates without the optimizer (an EMA
  # codebook's `vq_stats`); {} for most models.
  model_state: Any = flax.struct.field(default_factory=dict)


def _path_names(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, mesh):
  """Each optimizer-state leaf that mirrors a parameter (Adam's mu and nu) is sharded like it;
  everything else (counts, scalars) is replicated."""
  by_path = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                              jax.tree.leaves(param_shardings)):
    by_path[_path_names(path)] = (leaf.shape, sh)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    names = _path_names(path)
    for start in range(len(names)):
      hit = by_path.get(names[start:])
      if hit and hit[0] == leaf.shape:
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def abstract_variables(model, model_config):
  """Boxed abstract variables ({'params': ..., other collections}) from the config's example
  inputs: no memory, no FLOPs."""
  return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a),
                        *model_config.example_inputs())


def state_shardings(model, model_config, tx, mesh):
  """(abstract TrainState with shardings attached, TrainState of NamedShardings)."""
  variables = abstract_variables(model, model_config)
  boxed = variables["params"]
  params = nn.meta.unbox(boxed)
  param_sh = sharding.param_shardings(boxed, mesh)
  boxed_state = {k: v for k, v in variables.items() if k != "params"}
  model_state = nn.meta.unbox(boxed_state)
  model_state_sh = sharding.param_shardings(boxed_state, mesh)
  opt_state = jax.eval_shape(tx.init, params)
  opt_sh = opt_state_shardings(opt_state, params, param_sh, mesh)
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                         nonfinite_steps=replicated, consecutive_nonfinite=replicated,
                         model_state=model_state_sh)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  abstract = TrainState(step=scalar, params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32), nonfinite_steps=scalar,
                        consecutive_nonfinite=scalar, model_state=model_state)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def init_state(model, model_config, tx, seed: int, shardings: TrainState, params=None,
               init_rng=None):
  """A fresh state, built directly in its sharded layout (no full copy on one device).
  `params`, when given (e.g. from load_pretrained), replace the random init; `init_rng` replaces
  the key the variables are initialized from (split from `seed` by default)."""
  inputs = [jnp.zeros(x.shape, x.dtype) for x in model_config.example_inputs()]

  def make(params_in):
    init_key, state_key = jax.random.split(jax.random.key(seed))
    variables = nn.meta.unbox(model.init(init_key if init_rng is None else init_rng, *inputs))
    p = variables.pop("params") if params_in is None else params_in
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=p, opt_state=tx.init(p),
                      rng=jax.random.key_data(state_key), nonfinite_steps=zero,
                      consecutive_nonfinite=zero,
                      model_state={k: v for k, v in variables.items() if k != "params"})

  if params is None:
    return jax.jit(lambda: make(None), out_shardings=shardings)()
  return jax.jit(make, in_shardings=(shardings.params,), out_shardings=shardings)(params)
