"""What every format converter shares: options, image checking, skip records, the strict policy.

A converter turns one unit of input (a file, or a range of a TFDS split) into a stream of
`documents.Document`s and `Skipped` records, in input order. A converter never stops on bad input:
inside a record it raises `BadRecord(reason, detail)`, and its loop turns that into a `Skipped`
naming the source file and the record's key. The driver (`converters.write_dataset`) then counts
the skip, or, under strict=True, stops at the first one with a `ConversionError` carrying the same
file, key and reason.

Images are stored as their original encoded bytes when they are PNG or JPEG, and re-encoded as PNG
otherwise (WebP, GIF, BMP, ...), so that readers only ever need two decoders. Every image is decoded
in full once here, which is what catches truncated and corrupt files before they reach training.
"""
from __future__ import annotations

import dataclasses
import io
import os

from PIL import Image

# Reasons are short and fixed per kind of problem, so that summaries can count by them.
BAD_JSON = "bad json"
MALFORMED_RECORD = "malformed record"
MALFORMED_TURN = "malformed turn"
MISSING_IMAGE = "missing image"
CORRUPT_IMAGE = "corrupt image"
MISSING_CAPTION = "missing caption"
EMPTY_DOCUMENT = "empty document"
INVALID_DOCUMENT = "invalid document"
TRUNCATED_TAR = "truncated tar"
BAD_TAR = "bad tar"
LOW_SIMILARITY = "low similarity"  # an image below Options.min_sim

KEPT_FORMATS = ("PNG", "JPEG")
# Modes PNG can hold as they are; anything else (CMYK, YCbCr, float, ...) becomes RGB(A).
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")


class ConversionError(ValueError):
  """Stops a conversion: a bad record under strict=True, or input that cannot be read at all."""


class BadRecord(Exception):
  """Raised while converting one record; the converter turns it into a `Skipped`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Skipped:
  """Input left out of the dataset: a whole record, or one image of a document that was kept."""
  source: str        # the input file (or "tfds:name[split]")
  key: str           # the record within it: an id, a sample key, "line 12", ...
  reason: str        # one of the constants above
  detail: str = ""   # the specific error, for a human
  dropped: str = "record"  # "record" or "image"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def message(self) -> str:
    return (f"{self.source}: {self.key or '(whole file)'}: {self.reason}"
            + (f": {self.detail}" if self.detail else ""))

  @classmethod
  def of(cls, source: str, key: str, error: BadRecord, dropped: str = "record") -> "Skipped":
    return cls(source, key, error.reason, error.detail, dropped)


@dataclasses.dataclass(frozen=True)
class Options:
  """Settings of the converters (hashable, and picklable for worker processes)."""
  image_dir: str | None = None     # where relative image paths resolve; default: the input's folder
  drop_missing_images: bool = True  # interleaved: drop a missing image (True) or the document
  min_sim: float | None = None  # interleaved_webdataset: drop images whose matched_sim is lower
  tfds_name: str | None = None
  tfds_data_dir: str | None = None
  split: str = "train"
  image_key: str = "image"
  text_key: str = "caption"


def checked_image(data: bytes) -> bytes:
  """The bytes to store for an encoded image, after decoding it in full to prove it is whole.

  Raises BadRecord(CORRUPT_IMAGE) for anything PIL cannot decode to the last pixel.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # the full decode: Image.open alone reads only the header
      if image.format in KEPT_FORMATS:
        return data
      return _as_png(image)
  except Image.UnidentifiedImageError:  # its message holds a memory address: not reproducible
    raise BadRecord(CORRUPT_IMAGE, "not in an image format PIL can decode") from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    raise BadRecord(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None


def _as_png(image: Image.Image) -> bytes:
  if image.mode not in PNG_MODES:
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


def read_image(path: str) -> bytes:
  """A checked image from a file; BadRecord(MISSING_IMAGE) if it is not there."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
    raise BadRecord(MISSING_IMAGE, path) from None
  except OSError as e:
    raise BadRecord(MISSING_IMAGE, f"{path}: {e}") from None
  try:
    return checked_image(data)
  except BadRecord as e:
    raise BadRecord(e.reason, f"{path}: {e.detail}") from None


def image_dir_for(input_path: str, options: Options) -> str:
  """Relative image paths resolve against --image_dir, else against the input file's folder."""
  return options.image_dir or os.path.dirname(os.path.abspath(input_path))


def file_stem(path: str) -> str:
  """'a/b/shard-0001.tar.gz' -> 'shard-0001': the part of a file name used in document ids."""
  name = os.path.basename(path)
  for suffix in (".tar.gz", ".tgz", ".tar", ".jsonl", ".json"):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return os.path.splitext(name)[0]
