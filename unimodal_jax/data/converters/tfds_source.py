"""A prepared TensorFlow Datasets split -> "caption" documents, without TensorFlow.

tensorflow-datasets reads a prepared dataset without TensorFlow when it was prepared with
`file_format="array_record"`: `builder.as_data_source(split)` is a random-access source whose
examples are deserialized by tfds's numpy code path. Two more choices keep TensorFlow out:

- the dataset is opened from its files (`tfds.builder(name, data_dir=...)` falls back to the
  prepared files when no builder class is registered; `tfds.builder_from_directory(dir)` reads a
  version directory), and never downloaded or prepared here;
- the image feature is read with `tfds.decode.SkipDecoding()`, which returns the stored encoded
  bytes (decoding would give a numpy array to be re-encoded, and tfds's own encoders are TF ops).

TFRecord-prepared datasets cannot be read this way; the error says to re-prepare them as
array_record (or to install tensorflow and convert them elsewhere).

Units are index ranges of the split, so --workers splits one dataset across processes. Document
ids are "{dataset}/{split}/{index}"; a caption feature holding several captions (a Sequence of
Text) gives its first non-empty one as the text and all of them in metadata["captions"]. Other
scalar features go to metadata as well.
"""
from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from unimodal_jax.data import documents
from unimodal_jax.data.converters import common

RECORDS_PER_UNIT = 2000
UNIT_LABEL = "range"


def units(inputs: list[str], options: common.Options) -> list[tuple[int, int]]:
  if inputs:
    raise common.ConversionError("--format=tfds reads --tfds_name/--tfds_data_dir; --input is not used")
  size = len(_open(options)[1])
  return [(start, min(size, start + RECORDS_PER_UNIT)) for start in range(0, size, RECORDS_PER_UNIT)]


def convert(unit: tuple[int, int], options: common.Options
            ) -> Iterator[documents.Document | common.Skipped]:
  name, source = _open(options)
  where = f"tfds:{name}[{options.split}]"
  for index in range(*unit):
    try:
      yield _document(name, index, source[index], options)
    except common.BadRecord as e:
      yield common.Skipped.of(where, str(index), e)


@functools.lru_cache(maxsize=4)
def _open(options: common.Options):
  """(dataset name, data source of the split); opened once per process."""
  import tensorflow_datasets as tfds  # imported here: only this format needs it

  if options.tfds_name:
    try:
      builder = tfds.builder(options.tfds_name, data_dir=options.tfds_data_dir)
    except Exception as e:  # DatasetNotFoundError lists the whole catalog: keep the first line
      raise common.ConversionError(
          f"tfds dataset {options.tfds_name!r} (data_dir={options.tfds_data_dir}): "
          f"{str(e).splitlines()[0]}") from None
  elif options.tfds_data_dir:
    try:
      builder = tfds.builder_from_directory(options.tfds_data_dir)
    except Exception as e:
      raise common.ConversionError(f"{options.tfds_data_dir}: not a prepared tfds dataset version "
                                   f"directory ({type(e).__name__}: {e})") from None
  else:
    raise common.ConversionError("--format=tfds needs --tfds_name (and --tfds_data_dir), or "
                                 "--tfds_data_dir naming a prepared dataset's version directory")
  where = f"tfds dataset {builder.info.full_name} in {builder.data_dir}"
  if not builder.is_prepared():
    raise common.ConversionError(f"{where}: not prepared; prepare it (file_format='array_record') "
                                 f"first, this tool does not download")
  features = builder.info.features
  image_feature = _feature(features, options.image_key, where, "--image_key")
  _feature(features, options.text_key, where, "--text_key")
  if not isinstance(image_feature, tfds.features.Image):
    raise common.ConversionError(f"{where}: --image_key={options.image_key!r} is a "
                                 f"{type(image_feature).__name__}, not an Image feature")
  try:
    source = builder.as_data_source(split=options.split,
                                    decoders=_nested(options.image_key, tfds.decode.SkipDecoding()))
  except NotImplementedError as e:
    raise common.ConversionError(
        f"{where}: stored as {builder.info.file_format}, which tfds reads only through tensorflow; "
        f"prepare it with file_format='array_record' ({str(e).splitlines()[0]})") from None
  except (KeyError, ValueError) as e:
    raise common.ConversionError(f"{where}: split {options.split!r}: {e}; splits: "
                                 f"{sorted(builder.info.splits)}") from None
  return builder.info.name, source


def _feature(features, path: str, where: str, flag: str):
  """The feature at 'a/b' in a FeaturesDict."""
  feature = features
  for part in path.split("/"):
    try:
      feature = feature[part]
    except (KeyError, TypeError):
      raise common.ConversionError(f"{where}: {flag}={path!r} is not a feature; features: "
                                   f"{sorted(features.keys())}") from None
  return feature


def _nested(path: str, value):
  for part in reversed(path.split("/")):
    value = {part: value}
  return value


def _get(example: dict, path: str):
  for part in path.split("/"):
    example = example[part]
  return example


def _document(name: str, index: int, example: dict, options: common.Options) -> documents.Document:
  image = _get(example, options.image_key)
  if not isinstance(image, bytes):
    raise common.BadRecord(common.CORRUPT_IMAGE, f"expected encoded bytes, got {type(image).__name__}")
  captions = [c for c in _strings(_get(example, options.text_key)) if c.strip()]
  if not captions:
    raise common.BadRecord(common.MISSING_CAPTION, f"feature {options.text_key!r} is empty")
  metadata = {"tfds": name, "split": options.split, "index": index}
  if len(captions) > 1:
    metadata["captions"] = captions
  for key, value in example.items():
    if key not in (options.image_key, options.text_key) and _is_scalar(value):
      metadata[key] = _plain(value)
  segments = [documents.Segment.of_image(common.checked_image(image)),
              documents.Segment.of_text(captions[0].strip())]
  return documents.Document(f"{name}/{options.split}/{index}", "caption", segments, metadata)


def _strings(value) -> list[str]:
  """A Text feature's value(s) as str: bytes, or a list/array of them."""
  if isinstance(value, (bytes, str, np.bytes_, np.str_)):
    value = [value]
  try:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]
  except UnicodeDecodeError as e:
    raise common.BadRecord(common.MALFORMED_RECORD, f"caption is not UTF-8: {e}") from None


def _is_scalar(value) -> bool:
  return isinstance(value, (bool, int, float, str, bytes, np.generic)) or (
      isinstance(value, np.ndarray) and value.ndim == 0)


def _plain(value):
  """A msgpack-able Python value: numpy scalars unwrapped, bytes decoded when they are text."""
  if isinstance(value, np.ndarray | np.generic):
    value = value.item()
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return value
  return value
