"""Model kinds: each saved or configured model says its `kind` ('decoder' when it says none), and
this table maps the kind to its config class and its Flax module. The train loop, the AOT
compiler, the samplers and `load_pretrained` build models through here.

A new kind (U-Net, VAE, DreamLLM) registers the same way:

    build.register("unet", "unimodal_jax.models.unet:UNetConfig", "unimodal_jax.models.unet:UNet")

Classes are named by import path and imported on first use, so this module imports no model.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

# Keys a saved model_config may carry besides the config (how the model was trained: its training
# section, data, the tokenizer it was trained on), ignored when the model is built.
PROVENANCE = "provenance"


@dataclasses.dataclass(frozen=True)
class Kind:
  config_class: str  # "module:Class"
  module: str  # "module:Class or factory", called with the config
  # True when the checkpoint's tree holds every variable collection ({'params': ..., 'vq_stats':
  # ...}) rather than the params alone; load_pretrained returns it whole for model.apply.
  variables: bool = False


_KINDS: dict[str, Kind] = {}


def register(kind: str, config_class: str, module: str, *, variables: bool = False) -> None:
  if kind in _KINDS and _KINDS[kind] != Kind(config_class, module, variables):
    raise ValueError(f"model kind {kind!r} is registered already as {_KINDS[kind]}")
  _KINDS[kind] = Kind(config_class, module, variables)


register("decoder", "unimodal_jax.models.decoder_config:DecoderConfig",
         "unimodal_jax.models.decoder:Decoder")
register("illume", "unimodal_jax.models.illume:IllumeConfig", "unimodal_jax.models.illume:Illume")
register("vit", "unimodal_jax.models.vit:VitConfig", "unimodal_jax.models.vit:VisionTransformer")
register("clip", "unimodal_jax.models.clip:ClipConfig", "unimodal_jax.models.clip:Clip")
register("semantic_tokenizer", "unimodal_jax.models.vision_tokenizer:SemanticTokenizerConfig",
         "unimodal_jax.models.vision_tokenizer:SemanticTokenizer", variables=True)
register("pixel_vq", "unimodal_jax.models.pixel_vq:PixelVQConfig",
         "unimodal_jax.models.pixel_vq:PixelVQTokenizer", variables=True)
register("pixel_decoder", "unimodal_jax.models.pixel_decoder_config:PixelDecoderConfig",
         "unimodal_jax.models.pixel_decoder:PixelDecoder")
register("unet", "unimodal_jax.models.unet:UNetConfig", "unimodal_jax.models.unet:UNet")
register("vae", "unimodal_jax.models.vae:VAEConfig", "unimodal_jax.models.vae:VAE")
register("dreamllm", "unimodal_jax.models.dreamllm:DreamLLMConfig",
         "unimodal_jax.models.dreamllm:DreamLLM")


def _import(path: str):
  module, name = path.split(":")
  return getattr(importlib.import_module(module), name)


def kinds() -> tuple[str, ...]:
  return tuple(_KINDS)


def kind_of(d: Mapping[str, Any]) -> Kind:
  kind = d.get("kind", "decoder")
  if kind not in _KINDS:
    raise ValueError(f"model.kind={kind!r}; expected one of {kinds()}")
  return _KINDS[kind]


def config_from_dict(d: Mapping[str, Any]):
  """The config object of a config's `model` dict or a saved model_config, by its kind."""
  d = {k: v for k, v in d.items() if k != PROVENANCE}
  d.setdefault("kind", "decoder")  # checkpoints written before decoders said their kind
  return _import(kind_of(d).config_class).from_dict(d)


def build(model_config):
  """The Flax module of a model config."""
  return _import(kind_of({"kind": model_config.KIND}).module)(model_config)


def batch_inputs(model) -> tuple[str, ...]:
  """Batch fields the train/eval steps pass to the model besides the token ids."""
  return getattr(model, "BATCH_INPUTS", ("positions", "segment_ids"))


def llm_config(model_config):
  """The decoder part's config (the model itself for a plain decoder)."""
  return getattr(model_config, "llm", model_config)
