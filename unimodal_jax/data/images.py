"""Decode and resize/crop images for the model (in grain's workers)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


class ImageError(ValueError):
  """An image that cannot be decoded; the message names where it came from."""


def decode_rgb(data: bytes, where: str = "image") -> np.ndarray:
  """Encoded bytes -> uint8 [H, W, 3] at the image's own size."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img.convert("RGB"), dtype=np.uint8)
  except Exception as e:  # PIL raises many types for corrupt or truncated data
    raise ImageError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def decode_resize(data: bytes, size: int, where: str = "image") -> np.ndarray:
  """Encoded bytes -> uint8 [size, size, 3]: shorter side resized to `size` (bicubic), then the
  center square cropped, so the aspect ratio is kept."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      img = img.convert("RGB")
      w, h = img.size
      scale = size / min(w, h)
      new = (max(size, round(w * scale)), max(size, round(h * scale)))
      img = img.resize(new, Image.BICUBIC)
      left, top = (new[0] - size) // 2, (new[1] - size) // 2
      return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
  except Exception as e:  # PIL raises many types for corrupt or truncated data
    raise ImageError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def read_rgb(path: str) -> np.ndarray:
  """An image file -> uint8 [H, W, 3] at its own size; a missing or undecodable file is an
  ImageError naming the path."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageError(f"{path}: cannot read image ({e.strerror})") from e
  return decode_rgb(data, where=path)
