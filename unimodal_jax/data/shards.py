"""ArrayRecord shards of documents: writing, reading, and the dataset summary beside them.

A dataset is a directory of `{name}-{i:05d}-of-{n:05d}.array_record` files (ArrayRecord with
`group_size:1`, so any record is read without its neighbours) and `dataset_info.json`:
{"schema": 1, "name": ..., "num_records": ..., "shards": [{"file": ..., "num_records": ...}],
 "skipped": [{"source": file, "key": key, "reason": ...}], "created_by": ...}.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterable

from array_record.python import array_record_data_source, array_record_module

from unimodal_jax.data import documents

INFO_FILE = "dataset_info.json"
WRITER_OPTIONS = "group_size:1"


def shard_path(directory: str, name: str, index: int, count: int) -> str:
  return os.path.join(directory, f"{name}-{index:05d}-of-{count:05d}.array_record")


def write_shard(path: str, docs: Iterable[documents.Document]) -> int:
  """Write documents to one shard; returns how many were written."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
  n = 0
  try:
    for doc in docs:
      writer.write(documents.encode(doc))
      n += 1
  finally:
    writer.close()
  os.replace(tmp, path)
  return n


def write_info(directory: str, name: str, shard_counts: list[tuple[str, int]],
               skipped: list[dict], created_by: str) -> dict:
  info = {"schema": documents.SCHEMA_VERSION, "name": name,
          "num_records": sum(n for _, n in shard_counts),
          "shards": [{"file": os.path.basename(f), "num_records": n} for f, n in shard_counts],
          "skipped": skipped, "created_by": created_by}
  with open(os.path.join(directory, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)
  return info


def shard_files(directory: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(directory, "*.array_record")))
  if not files:
    raise FileNotFoundError(f"{directory}: no .array_record shards")
  return files


class ShardSource:
  """Random access to the raw records of a dataset directory (a grain data source)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.files = shard_files(directory)
    self._source = array_record_data_source.ArrayRecordDataSource(self.files)
    self._starts = []
    total = 0
    for f in self.files:
      self._starts.append(total)
      total += array_record_module.ArrayRecordReader(f).num_records()
    self._len = total

  def __len__(self) -> int:
    return self._len

  def where(self, index: int) -> str:
    """'file:record' of a global index, for error messages."""
    shard = max(i for i, s in enumerate(self._starts) if s <= index)
    return f"{os.path.basename(self.files[shard])}:{index - self._starts[shard]}"

  def __getitem__(self, index: int) -> bytes:
    return self._source[index]


def read_documents(directory: str) -> Iterable[documents.Document]:
  source = ShardSource(directory)
  for i in range(len(source)):
    yield documents.decode(source[i], where=f"{directory}/{source.where(i)}")
