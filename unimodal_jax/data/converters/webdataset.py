"""Image-caption tar files in the WebDataset layout (LAION, CC3M, CC12M via img2dataset) -> "caption"
documents.

A tar holds samples as files sharing a key: `00000123.jpg` + `00000123.txt` and/or
`00000123.json`. As in WebDataset, the key is the member path up to the first dot of its file
name, and a sample's files are contiguous in the tar. The image is the .jpg/.jpeg/.png/.webp
member; the caption is the .txt member, else the json's "caption" or "text" field. Each sample
becomes [image, caption text] with id "{tar stem}/{key}" and metadata {"key", "tar", and the
json's other fields}. Other members (.npy, .cls, ...) are ignored.

A truncated tar (cut inside a member, inside a header, or before its end-of-archive block; a cut
gzip stream) keeps the samples read before the cut; the sample being read is dropped and the
truncation is reported as one skip naming the tar.
"""
from __future__ import annotations

import json
import os
import tarfile
import zlib
from typing import Iterator

from unimodal_jax.data import documents
from unimodal_jax.data.converters import common

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_FIELDS = ("caption", "text")
# What reading a damaged tar raises: tarfile's own errors, and gzip's/zlib's for .tar.gz.
READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
UNIT_LABEL = "tar"


def units(inputs: list[str], options: common.Options) -> list[str]:
  return list(inputs)


def convert(path: str, options: common.Options) -> Iterator[documents.Document | common.Skipped]:
  stem = common.file_stem(path)
  for item in tar_samples(path):
    yield item if isinstance(item, common.Skipped) else _sample(path, stem, *item)


def tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]] | common.Skipped]:
  """(key, {extension: bytes}) of each sample of a WebDataset tar, in order (extension: the
  member's file name after its first dot, lower-cased). A tar that does not open is one Skipped;
  a cut tar yields the samples before the cut, then one Skipped naming the sample being read."""
  try:
    archive = tarfile.open(path, "r:*")
  except READ_ERRORS as e:
    yield common.Skipped(path, "", common.BAD_TAR, f"{type(e).__name__}: {e}")
    return
  with archive:
    key, files = None, {}
    try:
      for member in archive:
        if not member.isfile():
          continue
        member_key, extension = _split_name(member.name)
        if member_key != key:
          if key is not None:
            yield key, files
          key, files = member_key, {}
        files[extension] = archive.extractfile(member).read()
      _check_complete(archive)
    except READ_ERRORS as e:
      yield common.Skipped(path, key or "", common.TRUNCATED_TAR, f"{type(e).__name__}: {e}")
      return
    if key is not None:
      yield key, files


def _split_name(name: str) -> tuple[str, str]:
  """'./part/00012.jpg' -> ('part/00012', 'jpg'); the key ends at the file name's first dot."""
  name = name[2:] if name.startswith("./") else name
  folder, base = os.path.split(name)
  stem, _, extension = base.partition(".")
  return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _check_complete(archive: tarfile.TarFile) -> None:
  """Raise if the tar stopped without its end-of-archive block (tarfile just stops iterating)."""
  # tarfile ends its iteration after reading one 512-byte block at `offset`: the zero block of a
  # whole archive. Anything shorter means the file was cut in (or right before) a header.
  position = archive.fileobj.tell()
  if position != archive.offset + tarfile.BLOCKSIZE:
    raise tarfile.ReadError(f"archive ends at byte {position} without its end-of-archive block")
  # Reading to the end makes a cut gzip stream raise EOFError.
  while archive.fileobj.read(1 << 20):
    pass


def _sample(path: str, stem: str, key: str, files: dict[str, bytes]):
  try:
    return _document(stem, key, files, os.path.basename(path))
  except common.BadRecord as e:
    return common.Skipped.of(path, key, e)


def _document(stem: str, key: str, files: dict[str, bytes], tar_name: str) -> documents.Document:
  image_extensions = [e for e in IMAGE_EXTENSIONS if e in files]
  metadata = {}
  caption = None
  if "json" in files:
    try:
      fields = json.loads(files["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise common.BadRecord(common.BAD_JSON, f"{key}.json: {e}") from None
    if not isinstance(fields, dict):
      raise common.BadRecord(common.BAD_JSON, f"{key}.json is not an object")
    for field in CAPTION_FIELDS:
      if caption is None and isinstance(fields.get(field), str):
        caption = fields.pop(field)
    metadata.update(fields)
  if "txt" in files:
    try:
      caption = files["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
      raise common.BadRecord(common.MALFORMED_RECORD, f"{key}.txt is not UTF-8: {e}") from None
  if not image_extensions:
    raise common.BadRecord(common.MISSING_IMAGE, f"no {'/'.join(IMAGE_EXTENSIONS)} member for key "
                           f"{key!r} (members: {sorted(files)})")
  if len(image_extensions) > 1:
    raise common.BadRecord(common.MALFORMED_RECORD, f"several images for key {key!r}: {image_extensions}")
  if caption is None or not caption.strip():
    raise common.BadRecord(common.MISSING_CAPTION,
                           f"no .txt member and no 'caption'/'text' in .json (members: {sorted(files)})")
  image = common.checked_image(files[image_extensions[0]])
  metadata.update({"key": key, "tar": tar_name})
  segments = [documents.Segment.of_image(image), documents.Segment.of_text(caption.strip())]
  return documents.Document(f"{stem}/{key}", "caption", segments, metadata)
