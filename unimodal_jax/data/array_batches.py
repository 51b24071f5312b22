"""Batches of in-memory arrays through grain, for the models trained on data that fits in memory
(the CLIP, the tokenizer, the pixel decoder): the caller decides which rows go in each batch (a
list of index arrays, one per step), and grain serves them with an iterator state that the
training checkpoint holds, so a resumed run gets the very next batch."""
from __future__ import annotations

from typing import Mapping, Sequence

import grain
import numpy as np


class _Gather:
  """Row indices -> {name: array[indices]} (picklable, for grain)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    self.arrays = dict(arrays)

  def __call__(self, indices):
    return {k: v[indices] for k, v in self.arrays.items()}


def batches(arrays: Mapping[str, np.ndarray], index_batches: Sequence[np.ndarray]):
  """An iterator over {name: array[indices]} for each index array in order, with grain's
  get_state() / set_state()."""
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"array_batches: the arrays have different lengths {lengths}")
  n = next(iter(lengths.values()))
  for step, idx in enumerate(index_batches):
    if len(idx) and (np.min(idx) < 0 or np.max(idx) >= n):
      raise ValueError(f"array_batches: batch {step} indexes outside the {n} rows")
  source = [np.asarray(idx, np.int64) for idx in index_batches]
  return iter(grain.MapDataset.source(source).map(_Gather(arrays)))


def epoch_batches(n: int, batch: int, steps: int, seed: int) -> list[np.ndarray]:
  """Row indices of `steps` batches: epochs of a permutation (reshuffled each epoch), batches
  running on across epoch boundaries; deterministic from the seed."""
  rng = np.random.default_rng(seed)
  order, out = np.array([], np.int64), []
  for _ in range(steps):
    if len(order) < batch:
      order = np.concatenate([order, rng.permutation(n)])
    out.append(order[:batch])
    order = order[batch:]
  return out
