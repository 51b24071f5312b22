"""The optimizer from the config: optax AdamW, warm-up + cosine/constant schedule, global-norm
clipping, and parameter groups (path patterns, each with its own learning rate, or frozen).

Config (`config.optimizer`):
    learning_rate, warmup_steps, schedule ('cosine' | 'constant'), end_lr_ratio,
    b1, b2, eps, weight_decay, clip_grad_norm (0 = off),
    groups: {name: {pattern: regex on 'a/b/c' param paths, learning_rate | frozen: True}}
Groups are matched in order; the first whose pattern matches (re.fullmatch) a parameter's path
owns it; parameters no group matches form the group 'default' with the base learning rate.
A frozen group gets `optax.set_to_zero()`: no update and no optimizer state.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import optax

DEFAULT_GROUP = "default"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  name: str
  pattern: str
  learning_rate: float | None  # None: the base learning rate
  frozen: bool = False
  weight_decay: float | None = None


def param_paths(params) -> list[str]:
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def parse_groups(groups_config: Mapping[str, Any] | None) -> list[ParamGroup]:
  groups = []
  for name, g in (groups_config or {}).items():
    g = dict(g)
    unknown = sorted(set(g) - {"pattern", "learning_rate", "frozen", "weight_decay"})
    if unknown:
      raise ValueError(f"optimizer.groups.{name}: unknown field(s) {unknown}")
    if "pattern" not in g:
      raise ValueError(f"optimizer.groups.{name}: needs a 'pattern' (regex on param paths)")
    try:
      re.compile(g["pattern"])
    except re.error as e:
      raise ValueError(f"optimizer.groups.{name}.pattern {g['pattern']!r}: {e}") from e
    if name == DEFAULT_GROUP:
      raise ValueError(f"optimizer.groups: '{DEFAULT_GROUP}' is reserved for unmatched params")
    frozen = bool(g.get("frozen", False))
    if frozen and g.get("learning_rate") is not None:
      raise ValueError(f"optimizer.groups.{name}: frozen groups take no learning_rate")
    groups.append(ParamGroup(name, g["pattern"], g.get("learning_rate"), frozen,
                             g.get("weight_decay")))
  return groups


def label_params(params, groups: list[ParamGroup]):
  """Tree of group names, one per parameter. Raises for a group that matches nothing."""
  paths = param_paths(params)
  labels, used = [], set()
  for path in paths:
    label = next((g.name for g in groups if re.fullmatch(g.pattern, path)), DEFAULT_GROUP)
    labels.append(label)
    used.add(label)
  for g in groups:
    if g.name not in used:
      raise ValueError(f"optimizer.groups.{g.name}.pattern {g.pattern!r} matches no parameter "
                       f"(paths look like {paths[:3]})")
  return jax.tree.unflatten(jax.tree.structure(params), labels)


def frozen_mask(params, groups: list[ParamGroup]):
  """True for each parameter in a frozen group."""
  frozen = {g.name for g in groups if g.frozen}
  return jax.tree.map(lambda label: label in frozen, label_params(params, groups))


def schedule(opt: Mapping[str, Any], peak: float, total_steps: int):
  warmup = int(opt.get("warmup_steps", 0))
  kind = opt.get("schedule", "cosine")
  if kind == "constant":
    if warmup == 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 optax.constant_schedule(peak)], [warmup])
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup, max(total_steps, warmup + 1), peak * float(opt.get("end_lr_ratio", 0.0)))
  raise ValueError(f"optimizer.schedule={kind!r}; expected 'cosine' or 'constant'")


def build(opt: Mapping[str, Any], params, total_steps: int):
  """(optax transformation, {group: schedule}) for params (arrays or abstract shapes)."""
  groups = parse_groups(opt.get("groups"))
  labels = label_params(params, groups)
  base_lr = float(opt["learning_rate"])
  transforms, schedules = {}, {}
  for g in groups + [ParamGroup(DEFAULT_GROUP, "", None)]:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
      continue
    sched = schedule(opt, base_lr if g.learning_rate is None else float(g.learning_rate),
                     total_steps)
    schedules[g.name] = sched
    wd = float(opt.get("weight_decay", 0.0) if g.weight_decay is None else g.weight_decay)
    transforms[g.name] = optax.adamw(sched, b1=float(opt.get("b1", 0.9)),
                                     b2=float(opt.get("b2", 0.999)), eps=float(opt.get("eps", 1e-8)),
                                     weight_decay=wd)
  used = set(jax.tree.leaves(labels))
  transforms = {k: v for k, v in transforms.items() if k in used}
  schedules = {k: v for k, v in schedules.items() if k in used}
  tx = optax.multi_transform(transforms, labels)
  clip = float(opt.get("clip_grad_norm", 0.0))
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedules
