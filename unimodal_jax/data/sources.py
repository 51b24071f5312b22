"""Document sources for the pipeline: shard directories and worlds generated on the fly."""
from __future__ import annotations

from typing import Callable

from unimodal_jax.data import documents, shards
from unimodal_jax.data.pipeline import Source


class GeneratedRecords:
  """Records of a world: document i is made on demand from its index (deterministic), so a
  world needs no files and grain can shuffle and shard it like any dataset."""

  def __init__(self, make: Callable[[int], documents.Document], length: int):
    self.make, self.length = make, length

  def __len__(self):
    return self.length

  def __getitem__(self, index: int) -> bytes:
    return documents.encode(self.make(int(index)))


def from_shards(name: str, directory: str, weight: float = 1.0) -> Source:
  records = shards.ShardSource(directory)
  return Source(name, records, weight, where=records.where)


def from_world(name: str, make: Callable[[int], documents.Document], length: int,
               weight: float = 1.0) -> Source:
  return Source(name, GeneratedRecords(make, length), weight)
