"""DreamLLM's interleaved WebDataset tars (its MMC4 and interleaved pretraining data) ->
"interleaved" documents.

A sample is the tar members sharing a key (as in WebDataset: the member path up to the first dot
of its file name): `{key}.json`, an MMC4 record,

    {"text_list": ["sentence", ...],
     "image_info": [{"image_name": "abc.png", "matched_text_index": 2, "matched_sim": 0.31}, ...],
     "url": ...}

and each image as `{key}.{image name}` (DreamLLM re-encodes its images to jpg, so an image is
found by its name's stem with any of jpg/jpeg/png/webp).

Reading order, DreamLLM's: each image right AFTER the sentence it matches (the sentence
introduces the image it is followed by; images matched to one sentence in image_info order).
The MMC4 JSONL format (interleaved.py) places images before their sentence, as OpenFlamingo.

Options.min_sim drops each image whose matched_sim is below it, counted (reason "low
similarity"); an image without matched_sim is kept. A missing or corrupt image is dropped and
counted, or with drop_missing_images=False its document is skipped. A record that is not JSON,
not an object, or with a matched_text_index out of range is skipped by its key. A cut tar keeps
the samples before the cut (webdataset.tar_samples). Document ids are "{tar stem}/{key}";
metadata has the tar, the key, the URL if any, and the names of the images kept.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from unimodal_jax.data import documents
from unimodal_jax.data.converters import common, interleaved, webdataset

UNIT_LABEL = "tar"


def units(inputs: list[str], options: common.Options) -> list[str]:
  return list(inputs)


def convert(path: str, options: common.Options) -> Iterator[documents.Document | common.Skipped]:
  stem = common.file_stem(path)
  for item in webdataset.tar_samples(path):
    if isinstance(item, common.Skipped):
      yield item
      continue
    key, files = item
    try:
      record = _record(key, files)
      items, low = _items(record, options.min_sim)
    except common.BadRecord as e:
      yield common.Skipped.of(path, key, e)
      continue
    for name, sim in low:
      yield common.Skipped(path, f"{key}/{name}", common.LOW_SIMILARITY,
                           f"matched_sim {sim} < min_sim {options.min_sim}", dropped="image")
    metadata = {"tar": os.path.basename(path), "key": key}
    if isinstance(record.get("url"), str):
      metadata["url"] = record["url"]
    yield from interleaved.document_of(path, key, f"{stem}/{key}", items,
                                       lambda name: _image(key, files, name),
                                       options.drop_missing_images, metadata)


def _record(key: str, files: dict[str, bytes]) -> dict:
  if "json" not in files:
    raise common.BadRecord(common.MALFORMED_RECORD,
                           f"no {key}.json member (members: {sorted(files)})")
  try:
    record = json.loads(files["json"])
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise common.BadRecord(common.BAD_JSON, f"{key}.json: {e}") from None
  if not isinstance(record, dict) or "text_list" not in record:
    raise common.BadRecord(common.MALFORMED_RECORD, f"{key}.json is not an object with 'text_list'")
  return record


def _items(record: dict, min_sim: float | None):
  """(the document's items, [(image name, its matched_sim)] dropped below min_sim)."""
  texts, images = interleaved.matched_images(record)
  kept, low = [], []
  for image in images:
    sim = image[2].get("matched_sim")
    if min_sim is not None and isinstance(sim, (int, float)) and sim < min_sim:
      low.append((image[1], sim))
    else:
      kept.append(image)
  return interleaved.placed(texts, kept, after=True), low


def _image(key: str, files: dict[str, bytes], name: str) -> bytes:
  stem = name.rsplit(".", 1)[0].lower()
  found = [files[e] for e in (name.lower(), *(f"{stem}.{x}" for x in webdataset.IMAGE_EXTENSIONS))
           if e in files]
  if not found:
    raise common.BadRecord(common.MISSING_IMAGE, f"no member {key}.{stem}.<jpg|jpeg|png|webp> "
                           f"for image {name!r}")
  return common.checked_image(found[0])
