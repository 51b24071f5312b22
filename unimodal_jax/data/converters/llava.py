"""LLaVA-style conversation JSON -> "conversation" documents.

The input is a JSON list (or JSONL, one record a line) of records like

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is the man doing?"},
                       {"from": "gpt", "value": "He is ironing clothes on a taxi."}]}

with image paths relative to --image_dir (default: the JSON file's folder). "human" turns become
role "user" and "gpt" turns role "assistant" (the ShareGPT spellings "user", "assistant" and
"system" are accepted too). The image segment goes where `<image>` appears, in that turn's role;
the text around a placeholder is stripped, as LLaVA's own preprocessing does, so "<image>\\nWhat?"
gives [image, "What?"]. A record with an image but no placeholder gets the image before its first
human text; a record without "image" is a text-only conversation. "image" may also be a list, one
entry per placeholder in reading order.

The document id is the record's "id" (else "{file stem}/{index}"); metadata has the source file,
the image paths and the record's other top-level fields.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from unimodal_jax.data import documents
from unimodal_jax.data.converters import common

PLACEHOLDER = "<image>"
ROLE_OF_SPEAKER = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}
UNIT_LABEL = "file"


def units(inputs: list[str], options: common.Options) -> list[str]:
  return list(inputs)


def convert(path: str, options: common.Options) -> Iterator[documents.Document | common.Skipped]:
  image_dir = common.image_dir_for(path, options)
  for key, record, error in _records(path):
    if error is not None:
      yield common.Skipped.of(path, key, error)
      continue
    try:
      yield _document(path, key, record, image_dir)
    except common.BadRecord as e:
      yield common.Skipped.of(path, key, e)


def _records(path: str):
  """(key, record, None) per record, or (key, None, BadRecord) for what cannot be parsed."""
  stem = common.file_stem(path)
  if path.endswith(".jsonl"):
    with open(path, "rb") as f:  # lines as bytes: a bad UTF-8 line is one bad line, not a bad file
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          yield f"line {line_number}", None, common.BadRecord(common.BAD_JSON, str(e))
          continue
        yield _key(record, f"{stem}/{line_number}"), record, None
    return
  try:
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    yield "", None, common.BadRecord(common.BAD_JSON, str(e))
    return
  if not isinstance(records, list):
    yield "", None, common.BadRecord(common.BAD_JSON,
                                     f"expected a list of records, got {type(records).__name__}")
    return
  for index, record in enumerate(records):
    yield _key(record, f"{stem}/{index}"), record, None


def _key(record, fallback: str) -> str:
  if isinstance(record, dict) and record.get("id") not in (None, ""):
    return str(record["id"])
  return fallback


def _document(path: str, key: str, record, image_dir: str) -> documents.Document:
  if not isinstance(record, dict):
    raise common.BadRecord(common.MALFORMED_RECORD, f"expected an object, got {type(record).__name__}")
  turns = record.get("conversations")
  if not isinstance(turns, list) or not turns:
    raise common.BadRecord(common.MALFORMED_RECORD, "'conversations' must be a non-empty list")
  image_paths = _image_paths(record.get("image"))
  roles_and_texts = [_turn(i, turn) for i, turn in enumerate(turns)]

  placeholders = sum(text.count(PLACEHOLDER) for _, text in roles_and_texts)
  if placeholders == 0 and image_paths:
    first_user = next((i for i, (role, _) in enumerate(roles_and_texts) if role == "user"), None)
    if first_user is None:
      raise common.BadRecord(common.MALFORMED_RECORD, "an image but no human turn to put it in")
    role, text = roles_and_texts[first_user]
    roles_and_texts[first_user] = (role, PLACEHOLDER * len(image_paths) + text)
  elif placeholders != len(image_paths):
    raise common.BadRecord(common.MALFORMED_RECORD,
                           f"{placeholders} {PLACEHOLDER} placeholders for {len(image_paths)} images")

  # Structure first, then the (slower) image reads.
  images = iter([common.read_image(os.path.join(image_dir, p)) for p in image_paths])
  segments = []
  for role, text in roles_and_texts:
    for j, piece in enumerate(text.split(PLACEHOLDER)):
      if j > 0:
        segments.append(documents.Segment.of_image(next(images), role=role))
      if piece.strip():
        segments.append(documents.Segment.of_text(piece.strip(), role=role))

  metadata = {k: v for k, v in record.items() if k not in ("id", "image", "conversations")}
  metadata["source"] = os.path.basename(path)
  if image_paths:
    metadata["images"] = image_paths
  return documents.Document(key, "conversation", segments, metadata)


def _image_paths(value) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str) and value:
    return [value]
  if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
    return list(value)
  raise common.BadRecord(common.MALFORMED_RECORD,
                         f"'image' must be a path or a list of paths, got {value!r}")


def _turn(index: int, turn) -> tuple[str, str]:
  if not isinstance(turn, dict):
    raise common.BadRecord(common.MALFORMED_TURN, f"turn {index} is not an object")
  speaker = turn.get("from")
  if speaker not in ROLE_OF_SPEAKER:
    raise common.BadRecord(common.MALFORMED_TURN,
                           f"turn {index}: from={speaker!r}; expected one of {sorted(ROLE_OF_SPEAKER)}")
  value = turn.get("value")
  if not isinstance(value, str) or not value.strip():
    raise common.BadRecord(common.MALFORMED_TURN, f"turn {index}: empty or missing 'value'")
  return ROLE_OF_SPEAKER[speaker], value
