"""Converters from the formats datasets ship in to our ArrayRecord shards of documents.

FORMATS maps a format name to its module; each module has

    units(inputs, options) -> list of units     # one per input file (tfds: index ranges)
    convert(unit, options) -> Iterator[Document | Skipped]   # in input order
    UNIT_LABEL                                  # what a unit is, for the progress bar

and `write_dataset` runs one over its inputs: units in parallel worker processes, each writing a
temporary part file, then the parts concatenated in unit order into shards of `records_per_shard`
(so the output is the same for any number of workers), and `dataset_info.json` with every skip.
`tools/write_shards.py` is its command line.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import importlib
import itertools
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Iterable, Iterator

from array_record.python import array_record_module

from unimodal_jax.data import documents, shards
from unimodal_jax.data.converters.common import ConversionError, Options, Skipped

FORMATS = {
    "llava": "unimodal_jax.data.converters.llava",
    "webdataset": "unimodal_jax.data.converters.webdataset",
    "interleaved": "unimodal_jax.data.converters.interleaved",
    "interleaved_webdataset": "unimodal_jax.data.converters.interleaved_webdataset",
    "tfds": "unimodal_jax.data.converters.tfds_source",
}
READ_BATCH = 256  # records read from a part file at a time while writing shards

__all__ = ["FORMATS", "ConversionError", "Options", "Skipped", "Summary", "converter",
           "convert_unit", "write_dataset"]


def converter(format_name: str):
  """The module of a format (imported on first use: only tfds needs tensorflow_datasets)."""
  if format_name not in FORMATS:
    raise ConversionError(f"format={format_name!r}; known formats: {sorted(FORMATS)}")
  return importlib.import_module(FORMATS[format_name])


def convert_unit(format_name: str, unit, options: Options, strict: bool = False
                 ) -> Iterator[documents.Document | Skipped]:
  """One unit's documents and skips, with the strict policy and a schema check applied."""
  for item in converter(format_name).convert(unit, options):
    if isinstance(item, documents.Document):
      try:
        item.validate()
      except documents.DocumentError as e:  # a converter bug, but still one record's problem
        item = Skipped(str(unit), item.id, "invalid document", str(e))
    if isinstance(item, Skipped) and strict:
      raise ConversionError(item.message())
    yield item


@dataclasses.dataclass
class Summary:
  out_dir: str
  num_records: int
  shard_files: list[str]
  skipped: list[Skipped]
  seconds: float

  def counts(self, dropped: str) -> collections.Counter:
    return collections.Counter(s.reason for s in self.skipped if s.dropped == dropped)

  def line(self) -> str:
    def by_reason(counts):
      return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    records, images = self.counts("record"), self.counts("image")
    text = (f"wrote {self.num_records} records in {len(self.shard_files)} shards to {self.out_dir}; "
            f"skipped {sum(records.values())} records")
    if records:
      text += f" ({by_reason(records)})"
    if images:
      text += f"; dropped {sum(images.values())} images ({by_reason(images)})"
    return text + f"; {self.seconds:.1f}s"


def _convert_to_part(format_name: str, unit, options: Options, strict: bool, part_path: str
                     ) -> tuple[int, list[Skipped]]:
  """Worker: write one unit's documents to a part file; returns (count, skips)."""
  skipped = []

  def docs():
    for item in convert_unit(format_name, unit, options, strict):
      if isinstance(item, Skipped):
        skipped.append(item)
      else:
        yield item

  return shards.write_shard(part_path, docs()), skipped


def _read_part(path: str) -> Iterator[documents.Document]:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    count = reader.num_records()
    for start in range(0, count, READ_BATCH):
      for record in reader.read(start, min(count, start + READ_BATCH)):
        yield documents.decode(record, where=path)
  finally:
    reader.close()


def _old_dataset_files(out_dir: str, overwrite: bool) -> list[str]:
  """Files of an earlier dataset in out_dir, which must go: readers take every .array_record."""
  old = glob.glob(os.path.join(out_dir, "*.array_record"))
  if os.path.exists(os.path.join(out_dir, shards.INFO_FILE)):
    old.append(os.path.join(out_dir, shards.INFO_FILE))
  if old and not overwrite:
    raise ConversionError(f"{out_dir} already holds a dataset ({len(old)} files, e.g. "
                          f"{os.path.basename(old[0])}); choose another --out_dir or pass --overwrite")
  return old


def write_dataset(format_name: str, inputs: Iterable[str], out_dir: str, name: str,
                  options: Options = Options(), records_per_shard: int = 10000, workers: int = 1,
                  strict: bool = False, overwrite: bool = False, progress: bool = False,
                  created_by: str | None = None) -> Summary:
  """Convert `inputs` to `out_dir`/{name}-NNNNN-of-NNNNN.array_record + dataset_info.json.

  Documents keep input order (by input file, then record), whatever `workers` is. With strict=True
  the first bad record (in that order) raises ConversionError naming its file, key and reason, and
  nothing is written. Returns what was written; `dataset_info.json` lists every skip.
  """
  start = time.time()
  if records_per_shard < 1:
    raise ConversionError(f"records_per_shard={records_per_shard}; must be at least 1")
  module = converter(format_name)
  units = module.units(list(inputs), options)
  old_files = _old_dataset_files(out_dir, overwrite)
  os.makedirs(out_dir, exist_ok=True)
  parts_dir = tempfile.mkdtemp(prefix=".parts-", dir=out_dir)  # beside the shards: same disk
  try:
    parts = [os.path.join(parts_dir, f"part-{i:06d}.array_record") for i in range(len(units))]
    bar = _progress_bar(len(units), module.UNIT_LABEL) if progress else None
    results = _convert_all(format_name, units, parts, options, strict, workers, bar)
    for path in old_files:  # only now: a failed conversion leaves the old dataset as it was
      os.remove(path)
    total = sum(count for count, _ in results)
    skipped = [s for _, unit_skips in results for s in unit_skips]
    shard_counts = []
    count = math.ceil(total / records_per_shard)
    stream = itertools.chain.from_iterable(_read_part(p) for p, (n, _) in zip(parts, results) if n)
    bar = _progress_bar(total, "record", desc="writing shards") if progress else None
    for index in range(count):
      path = shards.shard_path(out_dir, name, index, count)
      written = shards.write_shard(path, itertools.islice(stream, records_per_shard))
      shard_counts.append((path, written))
      if bar:
        bar.update(written)
    if bar:
      bar.close()
  finally:
    shutil.rmtree(parts_dir, ignore_errors=True)
  shards.write_info(out_dir, name, shard_counts, [s.to_dict() for s in skipped],
                    created_by or f"unimodal_jax.data.converters (format={format_name})")
  return Summary(out_dir, total, [p for p, _ in shard_counts], skipped, time.time() - start)


def _convert_all(format_name, units, parts, options, strict, workers, bar):
  """(count, skips) per unit, in unit order; the first failing unit's error is raised."""
  results = []

  def done(result):
    results.append(result)
    if bar:
      bar.set_postfix(records=sum(count for count, _ in results), refresh=False)
      bar.update(1)

  try:
    if workers <= 1 or len(units) <= 1:
      for unit, part in zip(units, parts):
        done(_convert_to_part(format_name, unit, options, strict, part))
      return results
    # spawn, not fork: the parent may hold threads (jax, tfds) that fork would copy mid-operation.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(units)), mp_context=context) as pool:
      futures = [pool.submit(_convert_to_part, format_name, unit, options, strict, part)
                 for unit, part in zip(units, parts)]
      try:
        for future in futures:  # in order, so that the error raised is the first one in input order
          done(future.result())
      except BaseException:
        for future in futures:
          future.cancel()
        raise
    return results
  finally:
    if bar:
      bar.close()


def _progress_bar(total: int, unit: str, desc: str = "converting"):
  from tqdm import tqdm
  return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)
