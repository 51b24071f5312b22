"""The one description of a training batch: its fields, global shapes and dtypes, from the config.

The data pipeline's first batch is checked against it (data_setup), the training loop feeds the
step exactly these fields, and the AOT compiler (aot.py) builds its abstract batch from it, so the
program compiled for a pod is the program the loop runs (same segment masking, same attention
path, same image slots).

    config.data.kind == 'lm_text':   inputs, targets, target_mask                  [B, T]
    config.data.kind == 'documents': inputs, targets, target_mask, target_modality,
                                     segment_ids, positions                         [B, T]
                                     images [B, max_images, size, size, 3] uint8,
                                     image_segment_ids [B, max_images] (0 = empty slot)
      and with format.dream_queries > 0 (DreamLLM), the images drawn:
                                     dream_images [B, max_dream_images, S, S, 3] uint8,
                                     dream_image_segment_ids [B, max_dream_images]
B is config.global_batch (a process holds B / process_count rows), T is config.seq_len.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

DATA_KINDS = ("lm_text", "documents")


def batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
  """{field: ShapeDtypeStruct} of one global batch, as the training loop feeds the train step."""
  kind = config.data.get("kind", "lm_text")
  if kind not in DATA_KINDS:
    raise ValueError(f"config.data.kind={kind!r}; expected one of {DATA_KINDS}")
  rows = (int(config.global_batch), int(config.seq_len))
  spec = {"inputs": (rows, np.int32), "targets": (rows, np.int32),
          "target_mask": (rows, np.float32)}
  if kind == "documents":
    fmt = config.data.get("format") or {}
    size = int(fmt.get("image_size", 64))
    max_images = int(fmt.get("max_images", 4))
    spec.update({
        "target_modality": (rows, np.int32),
        "segment_ids": (rows, np.int32),
        "positions": (rows, np.int32),
        "images": ((rows[0], max_images, size, size, 3), np.uint8),
        "image_segment_ids": ((rows[0], max_images), np.int32),
    })
    if int(fmt.get("dream_queries", 0)):
      side = int(fmt.get("dream_image_size", 0)) or size
      dreams = int(fmt.get("max_dream_images", 1))
      spec.update({"dream_images": ((rows[0], dreams, side, side, 3), np.uint8),
                   "dream_image_segment_ids": ((rows[0], dreams), np.int32)})
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def describe(spec: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, dict]:
  """JSON-ready {field: {shape, dtype}} (tools/aot_compile.py prints it as `batch_fields`)."""
  return {k: {"shape": list(v.shape), "dtype": np.dtype(v.dtype).name} for k, v in spec.items()}


def check_local_batch(batch: Mapping[str, np.ndarray], spec: Mapping[str, jax.ShapeDtypeStruct],
                      process_count: int, where: str) -> None:
  """Raise, naming the field, when one process's batch is not its share of the spec."""
  missing, extra = sorted(set(spec) - set(batch)), sorted(set(batch) - set(spec))
  if missing or extra:
    raise ValueError(f"{where}: batch fields differ from the batch spec (train/batch_spec.py): "
                     f"missing {missing}, unexpected {extra}")
  for name, want in spec.items():
    got = np.asarray(batch[name])
    shape = (want.shape[0] // process_count,) + tuple(want.shape[1:])
    if got.shape != shape or got.dtype != want.dtype:
      raise ValueError(f"{where}: batch field {name!r} is {got.dtype.name}{list(got.shape)}, the "
                       f"spec says {np.dtype(want.dtype).name}{list(shape)} per process")
