"""The base of every model config: a frozen dataclass that reads itself from a config's dict (or a
saved `model_config`) naming any field it does not know, writes itself back as JSON-ready data
with its `kind`, and nests other configs.

    @dataclasses.dataclass(frozen=True)
    class FooConfig(ModelConfig):
      KIND = "foo"                      # written as "kind"; load_pretrained dispatches on it
      SECTION = "foo"                   # how error messages name the config
      NESTED = {"bar": BarConfig}       # fields holding another config (or None if optional)
      width: int = 8

A kind whose model does not start from token ids overrides `example_inputs`.
`models/build.py` maps each kind to its config class and module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

DTYPES = ("float32", "bfloat16", "float16")


class ModelConfig:
  """Mixin for frozen dataclasses (subclasses are decorated with @dataclasses.dataclass)."""
  KIND: ClassVar[str | None] = None
  SECTION: ClassVar[str] = "model"
  NESTED: ClassVar[Mapping[str, type]] = {}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]):
    d = dict(d)
    kind = d.pop("kind", cls.KIND)
    if kind != cls.KIND:
      raise ValueError(f"{cls.SECTION} config has kind={kind!r}; a {cls.__name__} needs "
                       f"kind={cls.KIND!r}")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown {cls.SECTION} config field(s) {unknown}; known fields: "
                       f"{sorted(known)}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in d]
    if required:
      raise ValueError(f"{cls.SECTION}.{required[0]} is missing (a {cls.__name__} needs "
                       f"{', '.join(required)})")
    for name, nested in cls.NESTED.items():
      if d.get(name) is not None and not isinstance(d[name], nested):
        d[name] = nested.from_dict(d[name])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    out = {"kind": self.KIND} if self.KIND else {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      out[f.name] = value.to_dict() if isinstance(value, ModelConfig) else value
    return out

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  def check_dtypes(self, names=("param_dtype", "dtype")) -> None:
    for name in names:
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{self.SECTION}.{name}={getattr(self, name)!r}; expected one of "
                         f"{DTYPES}")

  @property
  def jnp_param_dtype(self):
    import jax.numpy as jnp
    return jnp.dtype(self.param_dtype)

  @property
  def jnp_dtype(self):
    import jax.numpy as jnp
    return jnp.dtype(self.dtype)

  def example_inputs(self) -> tuple:
    """Abstract arguments of `model.init` (shapes only): token ids [1, 8] unless the kind reads
    something else. Summaries and sharding build abstract params from them."""
    import jax
    import jax.numpy as jnp
    return (jax.ShapeDtypeStruct((1, 8), jnp.int32),)
