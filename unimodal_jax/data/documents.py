"""The one record format of every task: a document.

A document is an ordered list of segments with an id, a task name and free metadata. Image-text
pairs, conversations, edit pairs and interleaved documents are all documents. Schema version 1:

    {
      "schema": 1,
      "id": "cc3m/000123",                 # unique within a dataset
      "task": "caption",                   # a name from TASKS (what the formatter does with it)
      "segments": [                        # in reading order
        {"type": "image", "image": b"<PNG or JPEG bytes>", "role": ""},
        {"type": "text", "text": "a dog on a beach", "role": ""},
        {"type": "image_tokens", "tokens": [12, 9051, ...], "role": ""},   # pre-tokenized image
      ],
      "metadata": {...}                    # free: source file, url, scores, edit kind, ...
    }

`role` is "" for plain documents and "user" / "assistant" in conversations (and in edit pairs:
the instruction and source image are the user's, the edited image the assistant's). Records are
msgpack-encoded dicts (bytes stay bytes), one per ArrayRecord entry (see shards.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

SCHEMA_VERSION = 1
SEGMENT_TYPES = ("text", "image", "image_tokens")
ROLES = ("", "user", "assistant", "system")
TASKS = (
    "caption",        # image -> text
    "text_to_image",  # text -> image
    "reconstruction", # image -> the same image's tokens (ILLUME stage 1)
    "conversation",   # multi-turn user/assistant, images in user turns (LLaVA, VQA)
    "edit",           # source image + instruction -> edited image
    "interleaved",    # free-form text and images (MMC4, OBELICS)
)


class DocumentError(ValueError):
  """A record that does not follow the schema; the message names the field."""


@dataclasses.dataclass
class Segment:
  type: str
  text: str | None = None
  image: bytes | None = None
  tokens: list[int] | None = None
  role: str = ""

  @classmethod
  def of_text(cls, text: str, role: str = "") -> "Segment":
    return cls("text", text=text, role=role)

  @classmethod
  def of_image(cls, image: bytes, role: str = "") -> "Segment":
    return cls("image", image=image, role=role)

  @classmethod
  def of_image_tokens(cls, tokens, role: str = "") -> "Segment":
    return cls("image_tokens", tokens=[int(t) for t in tokens], role=role)


@dataclasses.dataclass
class Document:
  id: str
  task: str
  segments: list[Segment]
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def validate(self) -> "Document":
    where = f"document {self.id!r}"
    if not isinstance(self.id, str) or not self.id:
      raise DocumentError(f"{where}: id must be a non-empty string")
    if self.task not in TASKS:
      raise DocumentError(f"{where}: task={self.task!r}; expected one of {TASKS}")
    if not self.segments:
      raise DocumentError(f"{where}: no segments")
    for i, seg in enumerate(self.segments):
      at = f"{where}, segment {i}"
      if seg.type not in SEGMENT_TYPES:
        raise DocumentError(f"{at}: type={seg.type!r}; expected one of {SEGMENT_TYPES}")
      if seg.role not in ROLES:
        raise DocumentError(f"{at}: role={seg.role!r}; expected one of {ROLES}")
      if seg.type == "text" and not isinstance(seg.text, str):
        raise DocumentError(f"{at}: a text segment needs 'text' (a string)")
      if seg.type == "image" and not (isinstance(seg.image, bytes) and seg.image):
        raise DocumentError(f"{at}: an image segment needs 'image' (encoded bytes)")
      if seg.type == "image_tokens" and not seg.tokens:
        raise DocumentError(f"{at}: an image_tokens segment needs 'tokens' (a list of ints)")
    return self

  def images(self) -> list[bytes]:
    return [s.image for s in self.segments if s.type == "image"]

  def to_dict(self) -> dict:
    segments = []
    for s in self.segments:
      d = {"type": s.type, "role": s.role}
      if s.type == "text":
        d["text"] = s.text
      elif s.type == "image":
        d["image"] = s.image
      else:
        d["tokens"] = list(s.tokens)
      segments.append(d)
    return {"schema": SCHEMA_VERSION, "id": self.id, "task": self.task, "segments": segments,
            "metadata": self.metadata}

  @classmethod
  def from_dict(cls, d: dict) -> "Document":
    if d.get("schema") != SCHEMA_VERSION:
      raise DocumentError(f"document {d.get('id')!r}: schema {d.get('schema')!r}, this reader "
                          f"knows version {SCHEMA_VERSION}")
    try:
      segments = [Segment(s["type"], text=s.get("text"), image=s.get("image"),
                          tokens=s.get("tokens"), role=s.get("role", "")) for s in d["segments"]]
      return cls(d["id"], d["task"], segments, d.get("metadata") or {}).validate()
    except (KeyError, TypeError) as e:
      raise DocumentError(f"document {d.get('id')!r}: malformed ({e!r})") from e


def encode(doc: Document) -> bytes:
  """Validated document -> record bytes."""
  return msgpack.packb(doc.validate().to_dict(), use_bin_type=True)


def decode(record: bytes, where: str = "record") -> Document:
  """Record bytes -> Document; raises DocumentError naming `where` on any problem."""
  try:
    d = msgpack.unpackb(record, raw=False)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise DocumentError(f"{where}: not a msgpack document ({type(e).__name__}: {e})") from e
  if not isinstance(d, dict):
    raise DocumentError(f"{where}: not a document (got {type(d).__name__})")
  try:
    return Document.from_dict(d)
  except DocumentError as e:
    raise DocumentError(f"{where}: {e}") from e
