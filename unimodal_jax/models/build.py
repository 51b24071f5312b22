"""Model configs by kind: `config.model` is a decoder's fields (kind 'decoder', the default) or an
ILLUME model's {kind: 'illume', llm: {...}, vision: {...}, image_codes, ...}. The train loop, the
AOT compiler and the samplers build models through here, so they take either."""
from __future__ import annotations

from typing import Any, Mapping

from unimodal_jax.models import illume
from unimodal_jax.models.decoder import Decoder
from unimodal_jax.models.decoder_config import DecoderConfig

KINDS = ("decoder", illume.KIND)


def config_from_dict(d: Mapping[str, Any]):
  """DecoderConfig or IllumeConfig from a config's `model` dict (or a saved model_config)."""
  d = dict(d)
  kind = d.get("kind", "decoder")
  if kind == "decoder":
    d.pop("kind", None)
    return DecoderConfig.from_dict(d)
  if kind == illume.KIND:
    return illume.IllumeConfig.from_dict(d)
  raise ValueError(f"model.kind={kind!r}; expected one of {KINDS}")


def build(model_config):
  """The Flax module of a model config."""
  if isinstance(model_config, illume.IllumeConfig):
    return illume.Illume(model_config)
  return Decoder(model_config)


def batch_inputs(model) -> tuple[str, ...]:
  """Batch fields the train/eval steps pass to the model besides the token ids."""
  return getattr(model, "BATCH_INPUTS", ("positions", "segment_ids"))


def llm_config(model_config) -> DecoderConfig:
  """The decoder part's config (the model itself for a plain decoder)."""
  return model_config.llm if isinstance(model_config, illume.IllumeConfig) else model_config
