"""Mesh construction, the one logical-axis rules table, and the shardings of params and batches.

Every parameter and main activation carries logical axis names; `LOGICAL_AXIS_RULES` maps them to
the mesh axes (`data`, `fsdp`, `tensor`). Nothing else in the stack names a mesh axis.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or axes, or None for replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("codebook", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("conv_height", None),  # a conv kernel's window
    ("conv_width", None),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_height", None),  # an image's rows and columns (U-Net, VAE)
    ("act_width", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("batch", BATCH_AXES),
    ("length", None),
)

log = logging.getLogger(__name__)


def initialize_processes(num_processes: int, process_id: int, coordinator_address: str) -> None:
  """Join a multi-process run (hosts of a pod, or processes on one CPU machine, which then use
  gloo collectives). Every process runs the same command; a no-op for one process."""
  if num_processes <= 1:
    return
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes for (data, fsdp, tensor); one of them may be -1 to take the remaining devices."""
  unknown = sorted(set(mesh_config) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh: unknown axis {unknown}; the axes are {MESH_AXES}")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size}: sizes are positive, or -1 for 'the rest'")
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {[MESH_AXES[i] for i in free]}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"mesh: {num_devices} devices cannot be split with the fixed axes "
          f"{dict(zip(MESH_AXES, sizes))} (product {fixed} does not divide {num_devices})")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, but there are "
        f"{num_devices}; set one of mesh.data/mesh.fsdp/mesh.tensor to -1 to take the rest")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh for these devices (all of them by default).

  Axis types are Auto: the compiler propagates shardings from the in/out shardings and the
  logical constraints (JAX 0.10's `jax.make_mesh` would default to Explicit).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # topology-unaware fallback (e.g. virtual CPU devices in odd counts)
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _fit_spec_to_shape(spec: P, shape: Sequence[int], mesh: Mesh, where: str) -> P:
  """Drop mesh axes that do not divide a dimension (e.g. 4 kv heads over tensor=8): that
  dimension is then replicated over them, and we say so once, instead of failing to compile."""
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    kept = []
    for axis in axes:
      if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
      else:
        log.warning("%s: dimension %d is not divisible by mesh axis %r (size %d); replicated "
                    "over it", where, dim, axis, mesh.shape[axis])
    fitted.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return P(*fitted)


def logical_to_mesh_spec(logical_axes: Sequence[str | None],
                         rules=LOGICAL_AXIS_RULES) -> P:
  return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def param_specs(boxed_params) -> Any:
  """Tree of PartitionSpecs over mesh axes from params boxed with logical names (the output of
  `model.init` or `jax.eval_shape(model.init, ...)`)."""
  logical = nn.get_partition_spec(boxed_params)
  return jax.tree.map(lambda spec: logical_to_mesh_spec(spec), logical,
                      is_leaf=lambda x: isinstance(x, P))


def param_shardings(boxed_params, mesh: Mesh) -> Any:
  """NamedSharding for each parameter (boxed params or their abstract shapes)."""
  specs = param_specs(boxed_params)
  shapes = nn.meta.unbox(boxed_params)
  paths_and_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  shardings = [
      NamedSharding(mesh, _fit_spec_to_shape(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))
      for (path, leaf), spec in zip(paths_and_shapes, flat_specs)
  ]
  return jax.tree.unflatten(jax.tree.structure(shapes), shardings)


def abstract_params(model: nn.Module, config):
  """Boxed abstract params of any model kind, from its config's example inputs (no memory, no
  FLOPs)."""
  return jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a),
                        *config.example_inputs())["params"]


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading dimension over the batch axes (data x fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def _from_host(value, target: NamedSharding) -> jax.Array:
  """A global array from the whole value that every process holds: each process fills only its
  own devices' shards, so nothing crosses hosts (jax.device_put would try to)."""
  host = np.asarray(value)
  return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def place_params(model: nn.Module, config, params, mesh: Mesh) -> Any:
  """Restored params (each process holds them whole) laid out on `mesh` as training lays them
  out (the rules table): sampling then runs where the params are, with no copy per call."""
  return jax.tree.map(_from_host, params,
                      param_shardings(abstract_params(model, config), mesh))


def shard_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """A global array that every process holds whole, its rows split over the batch axes (each
  device keeps its share). Rows must divide by data x fsdp (pad first)."""
  rows = np.asarray(rows)
  check_batch_divisible(rows.shape[0], mesh, field="rows")
  return _from_host(rows, batch_sharding(mesh, rows.ndim))


def pad_rows(rows: np.ndarray, mesh: Mesh) -> np.ndarray:
  """Rows padded with copies of the last one to a multiple of data x fsdp (for shard_rows;
  drop the padding after gather_rows)."""
  rows = np.asarray(rows)
  pad = -len(rows) % math.prod(mesh.shape[a] for a in BATCH_AXES)
  return np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)]) if pad else rows


def replicate(tree, mesh: Mesh) -> Any:
  """Arrays that every process holds whole, copied to every device of `mesh`."""
  return jax.tree.map(lambda x: _from_host(x, NamedSharding(mesh, P())), tree)


def gather_rows(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) array whole on this process: the inverse of shard_rows."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_batch_divisible(global_batch: int, mesh: Mesh, field: str = "batch_size") -> None:
  n = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_batch % n:
    raise ValueError(f"{field}={global_batch} is not divisible by the data x fsdp mesh axes "
                     f"({mesh.shape['data']} x {mesh.shape['fsdp']} = {n})")


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Within this context, the models' logical activation constraints bind to `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
