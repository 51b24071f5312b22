"""The grain pipeline from document sources to the train loop's batches.

    per source: records -> shuffle(seed) -> repeat -> this process's share -> decode + format
                (images decoded and resized, text tokenized; grain workers when num_workers > 0)
    mix the sources by weight -> drop (and count) what cannot be an example -> pack examples into
    rows of `max_length` tokens with segment ids and positions (grain's first-fit packing; the
    images travel with their rows) -> batch this process's rows

Every process walks the same shuffled order and keeps every process_count-th example, so the
processes read disjoint data that together cover each epoch. The iterator's get_state() /
set_state() go into the orbax checkpoint: a resumed run gets the very next batch.

A batch (numpy, per process): inputs, targets, target_mask, target_modality, segment_ids,
positions [rows, max_length]; images [rows, max_images, size, size, 3] uint8 and
image_segment_ids [rows, max_images] (0 = empty slot); for DreamLLM (format.dream_queries > 0)
also the images drawn, dream_images [rows, max_dream_images, dream size, dream size, 3] uint8 and
dream_image_segment_ids.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Callable, Sequence

import grain
import numpy as np

from unimodal_jax.data import documents
from unimodal_jax.data.formatting import Formatter, Skip

SEQUENCE_FEATURES = ("inputs", "targets", "target_mask", "target_modality")
# Each source is read and formatted in the consuming process, without grain's default 16 reader
# threads and 500-element buffer per source: formatting holds the GIL, so the threads only added
# polling (the 6-source shapes mix: 178 -> 45 ms per batch of 32 rows; tools/bench_data.py's
# JPEG mix: 7.2 -> 12.4 batches/s on 2 cores). Parallel reading is num_workers' job.
_SERIAL_READS = grain.ReadOptions(num_threads=0)


@dataclasses.dataclass
class Source:
  """A named source of encoded documents with a mixing weight.

  `records` is anything with __len__ and __getitem__ returning record bytes (a
  shards.ShardSource, or a world generating documents on the fly)."""
  name: str
  records: Sequence[bytes]
  weight: float = 1.0
  where: Callable[[int], str] | None = None  # index -> 'file:record' for messages


class SkipCounter:
  """Counts examples dropped and why (in the main process); with strict=True raises instead."""

  def __init__(self, strict: bool = False):
    self.strict = strict
    self.counts: collections.Counter = collections.Counter()
    self._lock = threading.Lock()
    self.kept = 0

  def __call__(self, example) -> bool:
    if "skip" not in example:
      self.kept += 1
      return True
    if self.strict:
      raise Skip(f"{example['where']}: {example['skip']}")
    with self._lock:
      # count by kind ("too long", "undecodable image", ...), not by the record's details
      self.counts[example["skip"].split(" (")[0].split(":")[0]] += 1
    return False

  def summary(self) -> dict:
    return {"kept": self.kept, "skipped": sum(self.counts.values()), **dict(self.counts)}


class _FormatRecord:
  """Picklable record -> example transform (runs in grain workers)."""

  def __init__(self, formatter: Formatter, source: Source):
    self.formatter, self.source = formatter, source

  def __call__(self, item, rng: np.random.Generator):
    index, record = item
    where = f"{self.source.name}:" + (self.source.where(index) if self.source.where else str(index))
    try:
      doc = documents.decode(record, where)
      return self.formatter(doc, rng, where)
    except (Skip, documents.DocumentError) as e:
      return {"skip": str(e).replace(where + ": ", ""), "where": where}


class _Indexed:
  """(index, record) pairs, so messages can name the record."""

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return (i, self.records[i])


def _to_batch(rows: dict) -> dict:
  batch = {
      **{k: rows[k] for k in SEQUENCE_FEATURES},
      "segment_ids": rows["inputs_segment_ids"],
      "positions": rows["inputs_positions"],
      "images": rows["images"],
      "image_segment_ids": rows["images_segment_ids"],
  }
  if "dream_images" in rows:
    batch["dream_images"] = rows["dream_images"]
    batch["dream_image_segment_ids"] = rows["dream_images_segment_ids"]
  return batch


def source_examples(source: Source, transform, *, seed: int, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """One source's endless stream of this process's examples: shuffled (reshuffled each epoch),
  every process_count-th element, transformed by `transform((index, record), rng)`."""
  return (grain.MapDataset.source(_Indexed(source.records)).shuffle(seed=seed).repeat(None)
          [process_index::process_count].random_map(transform, seed=seed + 104729))


def build(sources: Sequence[Source], formatter: Formatter, *, global_batch: int, seed: int,
          process_index: int = 0, process_count: int = 1, num_workers: int = 0,
          packing_bins: int | None = None, strict: bool = False):
  """(grain IterDataset of this process's batches, SkipCounter)."""
  if global_batch % process_count:
    raise ValueError(f"global_batch={global_batch} not divisible by {process_count} processes")
  if not sources:
    raise ValueError("data: no sources")
  for s in sources:
    if len(s.records) == 0:
      raise ValueError(f"data source {s.name!r} is empty")
    if s.weight <= 0:
      raise ValueError(f"data source {s.name!r}: weight {s.weight} must be positive")
  per_source = [source_examples(s, _FormatRecord(formatter, s), seed=seed + 7919 * i,
                                process_index=process_index, process_count=process_count)
                 .to_iter_dataset(_SERIAL_READS) for i, s in enumerate(sources)]
  weights = [s.weight for s in sources]
  mixed = per_source[0] if len(per_source) == 1 else grain.IterDataset.mix(per_source, weights)
  if num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; Colab/pytest never parse
      flags.FLAGS.mark_as_parsed()
    mixed = mixed.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  counter = SkipCounter(strict)
  mixed = mixed.filter(counter)
  cfg = formatter.config
  local_batch = global_batch // process_count
  length = {k: cfg.max_length for k in SEQUENCE_FEATURES}
  length["images"] = cfg.max_images
  if cfg.dream_queries:
    length["dream_images"] = cfg.max_dream_images
  packed = grain.experimental.FirstFitPackIterDataset(
      mixed, length_struct=length, num_packing_bins=packing_bins or local_batch,
      seed=seed, shuffle_bins=False)
  return packed.batch(local_batch, drop_remainder=True).map(_to_batch), counter
