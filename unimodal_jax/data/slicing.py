"""High-resolution understanding (ILLUME stage 3: up to 9 slices at base 448): an image the model
reads becomes a global view plus a grid of slices, each a base-size view through the encoder.

    grid = choose_grid(height, width, base, max_slices)    # (rows, cols); (1, 1) = no slices
    views = slice_views(image, base, grid)                  # uint8 [1 + rows * cols, base, base, 3]
    ids = view_token_ids(vocab, tokens_per_view, grid)      # the read image's token ids

Token layout (P = tokens_per_view <image_patch> slots per view, row-major slices):

    <image_start> P(global) <slice_sep> P(0,0) P(0,1) .. <slice_sep> P(1,0) .. <image_end>

so every <slice_sep> opens a row of slices and the model can tell the grid's shape. Without
slices it is `<image_start> P <image_end>`, the layout of an image read at base size. The k-th
<image_patch> slot of a row takes the k-th view's features in order (models/illume.py), so the
model needs nothing beyond the views in `images`.

Choosing the grid (our rule; the paper gives only the slice cap and the base): an image of
`ideal = H * W / base**2` base areas gets at most ceil(ideal) slices (capped by max_slices); among
those grids the one whose aspect (cols / rows) is nearest the image's in log scale wins, ties
going to more slices. A 896 x 448 (W x H) image at base 448 is cut 1 x 2; 1344 x 896 is 2 x 3;
anything within one base area is not sliced.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

NO_SLICES = (1, 1)


def choose_grid(height: int, width: int, base: int, max_slices: int) -> tuple[int, int]:
  """(rows, cols) of slices for an image of height x width pixels; (1, 1) means no slices."""
  if height <= 0 or width <= 0:
    raise ValueError(f"image size {height} x {width}: both sides must be positive")
  if max_slices <= 1:
    return NO_SLICES
  ideal = height * width / float(base * base)
  cap = min(max_slices, math.ceil(ideal - 1e-9))
  aspect = math.log(width / height)
  best, best_key = NO_SLICES, None
  for rows in range(1, cap + 1):
    for cols in range(1, cap // rows + 1):
      key = (abs(aspect - math.log(cols / rows)), -rows * cols)
      if best_key is None or key < best_key:
        best, best_key = (rows, cols), key
  return best


def num_views(grid: tuple[int, int]) -> int:
  """Views through the encoder: the global view, plus the slices when there are any."""
  rows, cols = grid
  return 1 if (rows, cols) == NO_SLICES else 1 + rows * cols


def slice_views(image: np.ndarray, base: int, grid: tuple[int, int]) -> np.ndarray:
  """uint8 [num_views(grid), base, base, 3]: the whole image resized to base x base, then the
  image resized to (rows * base) x (cols * base) and cut into its slices, row by row."""
  pil = Image.fromarray(np.asarray(image, np.uint8))
  views = [np.asarray(pil.resize((base, base), Image.BICUBIC), np.uint8)]
  rows, cols = grid
  if (rows, cols) != NO_SLICES:
    big = np.asarray(pil.resize((cols * base, rows * base), Image.BICUBIC), np.uint8)
    views += [big[r * base:(r + 1) * base, c * base:(c + 1) * base]
              for r in range(rows) for c in range(cols)]
  return np.stack(views)


def view_token_ids(vocab, tokens_per_view: int, grid: tuple[int, int]) -> list[int]:
  """The token ids of one image read as `grid` (see the module docstring for the layout)."""
  patch = [vocab.image_patch] * tokens_per_view
  ids = [vocab.image_start] + patch
  rows, cols = grid
  if (rows, cols) != NO_SLICES:
    for _ in range(rows):
      ids += [vocab.slice_sep] + patch * cols
  return ids + [vocab.image_end]


__all__ = ["choose_grid", "num_views", "slice_views", "view_token_ids", "NO_SLICES"]
