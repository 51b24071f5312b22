"""Interleaved image-text JSONL (MMC4 and OBELICS layouts) -> "interleaved" documents.

One JSON object a line, in either layout (detected per line):

  MMC4:    {"text_list": ["sentence", ...],
            "image_info": [{"image_name": "abc.jpg", "raw_url": "http://...", "matched_text_index": 2,
                            ...}, ...], "url": ...}
  OBELICS: {"texts": ["text", null, ...], "images": [null, "http://.../x.jpg", ...], ...}
           (parallel lists: at each position exactly one of text and image is set)

Images are files in --image_dir (default: the JSONL's folder), named by "image_name" or else by
the file name at the end of the URL (query string removed).

Reading order. OBELICS lists are already in reading order. MMC4 only says which sentence each
image matches, so each image goes immediately BEFORE its matched sentence, images matched to the
same sentence in image_info order: the placement of OpenFlamingo's MMC4 loader (an image is
followed by the text that refers to it). DreamLLM's loader places each image AFTER its sentence;
its tars are the interleaved_webdataset format.

A missing or corrupt image is dropped from its document and counted (a skip with dropped="image"
and key "line N/<image name>"); with drop_missing_images=False the whole document is skipped
instead. A line that is not JSON, or not one of the layouts, is skipped with key "line N". Document
ids are "{file stem}/{line number}"; metadata has the source file, the line, the URL if any, and
the names of the images kept.
"""
from __future__ import annotations

import json
import os
import urllib.parse
from typing import Iterator

from unimodal_jax.data import documents
from unimodal_jax.data.converters import common

UNIT_LABEL = "file"


def units(inputs: list[str], options: common.Options) -> list[str]:
  return list(inputs)


def convert(path: str, options: common.Options) -> Iterator[documents.Document | common.Skipped]:
  image_dir = common.image_dir_for(path, options)
  stem = common.file_stem(path)
  with open(path, "rb") as f:  # lines as bytes: a bad UTF-8 line is one bad line, not a bad file
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      key = f"line {line_number}"
      try:
        record = json.loads(line)
        if not isinstance(record, dict):
          raise common.BadRecord(common.MALFORMED_RECORD,
                                 f"expected an object, got {type(record).__name__}")
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield common.Skipped(path, key, common.BAD_JSON, str(e))
        continue
      except common.BadRecord as e:
        yield common.Skipped.of(path, key, e)
        continue
      yield from _convert_record(path, key, f"{stem}/{line_number}", line_number, record, image_dir,
                                 options.drop_missing_images)


def _convert_record(path, key, doc_id, line_number, record, image_dir, drop_missing_images):
  try:
    if "text_list" in record:
      items = _mmc4_items(record)
    elif "texts" in record and "images" in record:
      items = _obelics_items(record)
    else:
      raise common.BadRecord(common.MALFORMED_RECORD,
                             f"neither MMC4 ('text_list') nor OBELICS ('texts' + 'images'); keys: "
                             f"{sorted(record)[:10]}")
  except common.BadRecord as e:
    yield common.Skipped.of(path, key, e)
    return
  metadata = {"source": os.path.basename(path), "line": line_number}
  if isinstance(record.get("url"), str):
    metadata["url"] = record["url"]
  yield from document_of(path, key, doc_id, items,
                         lambda name: common.read_image(os.path.join(image_dir, name)),
                         drop_missing_images, metadata)


def document_of(path, key, doc_id, items, read_image, drop_missing_images, metadata):
  """The "interleaved" document of items [("text", str) | ("image", name)], each image's bytes
  from read_image(name) (raising common.BadRecord): an image that fails is dropped and counted
  (key "KEY/NAME"), or with drop_missing_images=False the document is skipped. metadata gains
  "images", the names kept."""
  segments, kept_images, dropped = [], [], []
  for kind, value in items:
    if kind == "text":
      if value:
        segments.append(documents.Segment.of_text(value))
      continue
    try:
      segments.append(documents.Segment.of_image(read_image(value)))
      kept_images.append(value)
    except common.BadRecord as e:
      if not drop_missing_images:
        yield common.Skipped.of(path, key, e)
        return
      dropped.append(common.Skipped.of(path, f"{key}/{value}", e, dropped="image"))
  yield from dropped
  if not segments:
    yield common.Skipped(path, key, common.EMPTY_DOCUMENT, "no text and no image left")
    return
  yield documents.Document(doc_id, "interleaved", segments, dict(metadata, images=kept_images))


def matched_images(record: dict) -> tuple[list[str], list[tuple[int, str, dict]]]:
  """MMC4's text_list and image_info, checked: (sentences, [(matched sentence index, image
  name, the image_info entry)] in image_info order)."""
  texts = record["text_list"]
  if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
    raise common.BadRecord(common.MALFORMED_RECORD, "'text_list' must be a list of strings")
  infos = record.get("image_info") or []
  if not isinstance(infos, list):
    raise common.BadRecord(common.MALFORMED_RECORD, "'image_info' must be a list")
  images = []
  for i, info in enumerate(infos):
    index = info.get("matched_text_index") if isinstance(info, dict) else None
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(texts):
      raise common.BadRecord(common.MALFORMED_RECORD,
                             f"image_info[{i}]: matched_text_index={index!r} for {len(texts)} texts")
    images.append((index, _image_name(info.get("image_name") or info.get("raw_url"),
                                      f"image_info[{i}]"), info))
  return texts, images


def _mmc4_items(record: dict) -> list[tuple[str, str]]:
  """[("text", sentence) | ("image", file name)] with each image right before its matched
  sentence (OpenFlamingo's placement)."""
  texts, images = matched_images(record)
  return placed(texts, images, after=False)


def placed(texts: list[str], images: list[tuple[int, str, dict]], *, after: bool
           ) -> list[tuple[str, str]]:
  """Items of matched_images' output: each image right before its sentence, or right after it
  (after=True, DreamLLM's placement); images matched to one sentence keep their order."""
  at = [[] for _ in texts]
  for index, name, _ in images:
    at[index].append(("image", name))
  items = []
  for text, here in zip(texts, at):
    items.extend(([("text", text)] + here) if after else (here + [("text", text)]))
  return items


def _obelics_items(record: dict) -> list[tuple[str, str]]:
  texts, images = record["texts"], record["images"]
  if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
    raise common.BadRecord(common.MALFORMED_RECORD, "'texts' and 'images' must be lists of one length")
  items = []
  for i, (text, image) in enumerate(zip(texts, images)):
    if (text is None) == (image is None):
      raise common.BadRecord(common.MALFORMED_RECORD,
                             f"position {i}: exactly one of texts[{i}] and images[{i}] must be set")
    if text is not None:
      if not isinstance(text, str):
        raise common.BadRecord(common.MALFORMED_RECORD, f"texts[{i}] is not a string")
      items.append(("text", text))
    else:
      items.append(("image", _image_name(image, f"images[{i}]")))
  return items


def _image_name(name_or_url, where: str) -> str:
  """An image's file name in --image_dir: an image_name as it is, a URL's last path part."""
  if not isinstance(name_or_url, str) or not name_or_url:
    raise common.BadRecord(common.MALFORMED_RECORD, f"{where}: no image name or URL")
  if "://" in name_or_url:
    name = os.path.basename(urllib.parse.urlparse(name_or_url).path)
    if not name:
      raise common.BadRecord(common.MALFORMED_RECORD, f"{where}: no file name in URL {name_or_url!r}")
    return name
  return name_or_url
