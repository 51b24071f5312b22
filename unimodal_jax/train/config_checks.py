"""Checks that fail a run before compiling, naming the config field that does not make sense."""
from __future__ import annotations

import math

from unimodal_jax import sharding

REQUIRED = {
    "": ("model", "mesh", "global_batch", "seq_len", "train", "optimizer", "data"),
    "train": ("steps", "seed", "log_every", "eval_every", "eval_batches", "checkpoint_every",
              "keep_checkpoints", "max_consecutive_nonfinite"),
    "optimizer": ("learning_rate",),
}


def check_fields(config) -> None:
  for section, fields in REQUIRED.items():
    node = config if not section else config.get(section)
    if node is None:
      raise ValueError(f"config has no '{section}' section")
    for f in fields:
      if f not in node:
        raise ValueError(f"config.{section + '.' if section else ''}{f} is missing")
  for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
               "max_consecutive_nonfinite"):
    if int(config.train[name]) <= 0:
      raise ValueError(f"config.train.{name}={config.train[name]} must be positive")
  for name in ("global_batch", "seq_len"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name}={config[name]} must be positive")


def check_batch(config, mesh, process_count: int) -> None:
  accum = int(config.train.get("grad_accum_steps", 1))
  if accum <= 0 or config.global_batch % accum:
    raise ValueError(f"config.train.grad_accum_steps={accum} must divide "
                     f"config.global_batch={config.global_batch}")
  data_shards = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  micro = config.global_batch // accum
  if micro % data_shards:
    raise ValueError(f"config.global_batch={config.global_batch} / train.grad_accum_steps={accum}"
                     f" = {micro} sequences per microbatch, not divisible by the data x fsdp "
                     f"mesh axes ({data_shards})")
  if config.global_batch % process_count:
    raise ValueError(f"config.global_batch={config.global_batch} is not divisible by the "
                     f"{process_count} processes")


def check_image_size(config, model_config) -> None:
  """The pixels the data pipeline writes (data.format.image_size) are what the encoder reads,
  and its <image_patch> slots per view (data.format.tokens_per_image) what the model fills."""
  vision = getattr(model_config, "vision", None)
  if vision is None or config.data.get("kind", "lm_text") != "documents":
    return
  fmt = config.data.get("format") or {}
  if "image_size" in fmt and int(fmt["image_size"]) != vision.image_size:
    raise ValueError(f"config.data.format.image_size={fmt['image_size']} differs from "
                     f"config.model.vision.image_size={vision.image_size}")
  slots = getattr(model_config, "tokens_per_image", None)
  if slots is not None and "tokens_per_image" in fmt and int(fmt["tokens_per_image"]) != slots:
    raise ValueError(f"config.data.format.tokens_per_image={fmt['tokens_per_image']} differs from "
                     f"the model's {slots} slots per view (vision grid / model.token_merge**2)")
  queries = getattr(model_config, "num_dream_queries", None)
  if queries is not None:
    if int(fmt.get("dream_queries", 0)) != queries:
      raise ValueError(f"config.data.format.dream_queries={fmt.get('dream_queries', 0)} differs "
                       f"from config.model.num_dream_queries={queries}: DreamLLM writes each "
                       "image it draws as <dream_start> + that many query slots + <dream_end>")
    side = int(fmt.get("dream_image_size", 0)) or int(fmt.get("image_size", 64))
    if side != model_config.dream_image_size:
      raise ValueError(f"config.data.format.dream_image_size={side} differs from "
                       f"config.model.dream_image_size={model_config.dream_image_size}")
  elif int(fmt.get("dream_queries", 0)):
    raise ValueError(f"config.data.format.dream_queries={fmt['dream_queries']}, but a "
                     f"{type(model_config).__name__} does not draw with dream queries")
