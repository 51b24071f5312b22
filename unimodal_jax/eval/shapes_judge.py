"""Judge for the shapes world: reads objects back out of pixels and scores images against prompts.

Generated images carry no ground truth, so to score a text-to-image model on the shapes world
(and to check its answers or edits) we detect objects in the image itself:

  1. background: the median of the image border; every channel is divided by it (times the
     world's background), which undoes global brightness and per-channel color gains;
  2. foreground: pixels far from the background color (after a light smoothing against noise),
     split into connected components; tiny blobs are dropped;
  3. per component, a soft coverage ("alpha") from projecting each pixel onto the line between
     background and the component's core color; its sum is the area, its centroid the center;
  4. shape by analysis-by-synthesis: each shape's anti-aliased template with the same area and
     centroid (optionally blurred) is compared with the alpha map; the closest wins. The size
     class follows from the area, the color is the palette color nearest the core color.

On top of detection, GenEval's rules (object presence, counts, colors, relative position,
color-attribute binding) score an image against a structured prompt. `render_for_spec` draws
scenes that satisfy a prompt, so the scorer itself can be tested against ground truth.
"""
from __future__ import annotations

import collections
import dataclasses
import io
from typing import Iterable

import numpy as np
from PIL import Image
from scipy import ndimage

from unimodal_jax.data.worlds import geneval, shapes

BACKGROUND = np.asarray(shapes.BACKGROUND, np.float32)
PALETTE = np.asarray(list(shapes.COLORS.values()), np.float32)
COLOR_NAMES = tuple(shapes.COLORS)

# Area of each shape as a fraction of its bounding square, and where its centroid sits below the
# center of that square (fraction of the extent): the triangle's mass is low, at 2/3 of its height.
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5,
        "cross": 2 * shapes.CROSS_ARM - shapes.CROSS_ARM ** 2}
CENTROID_DROP = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "cross": 0.0}
TEMPLATE_BLURS = (0.0, 0.8, 1.6, 2.4)  # pixels; lets a blurred edge still match the right shape
FOREGROUND_DISTANCE = 45.0  # RGB distance from the background that counts as foreground
SMOOTHING = 0.7  # pixels, Gaussian, before thresholding: keeps noise from making specks
SPLIT_LEVEL = 0.5  # objects are seeded where contrast exceeds this fraction of their blob's peak
MIN_AREA = 0.35  # of the smallest object's area; smaller blobs are noise or debris
# Size class boundary: geometric mean of the small and large extents.
SIZE_THRESHOLD = float(np.sqrt(shapes.SIZES["small"] * shapes.SIZES["large"]))
# kind -> (mild, moderate, heavy) levels, as measured by tools/measure_judge.py. "Moderate" is the
# strength the judge is required to survive (tests/test_shapes_world.py); "heavy" shows the margin.
DEGRADATIONS = {
    "noise": (5.0, 15.0, 30.0),  # Gaussian sigma, in 0-255 pixel units
    "blur": (0.5, 1.0, 2.0),  # Gaussian sigma, pixels
    "color_shift": (0.05, 0.15, 0.3),  # per-channel gain within 1 +- level, offset +- 100 * level
    "jpeg": (75, 50, 25),  # JPEG quality
}


@dataclasses.dataclass(frozen=True)
class Detection:
  shape: str
  color: str
  size: str
  x: float  # center of the bounding square, fraction of the image width
  y: float  # fraction of the image height (downwards)
  extent: float  # side of the bounding square, fraction of the image size
  area_px: float  # soft area in pixels
  fit: float  # template mismatch: sum of squared alpha errors / area (0 is perfect)

  @property
  def center(self) -> tuple[float, float]:
    return (self.x, self.y)

  def box(self) -> tuple[float, float, float, float]:
    half = self.extent / 2
    return (self.x - half, self.y - half, self.x + half, self.y + half)

  def kind(self) -> tuple[str, str, str]:
    return (self.shape, self.color, self.size)


# ---------------------------------------------------------------------------------------------
# Detection.

def estimate_background(image: np.ndarray) -> np.ndarray:
  """Median color of a frame along the border (objects keep off the edges in this world)."""
  width = max(1, image.shape[0] // 32)
  frame = np.concatenate([image[:width].reshape(-1, 3), image[-width:].reshape(-1, 3),
                          image[:, :width].reshape(-1, 3), image[:, -width:].reshape(-1, 3)])
  return np.median(frame, axis=0)


def _classify_color(core: np.ndarray) -> str:
  # Each palette color may appear mixed with the background (small or blurred objects): fit the
  # mixing weight, then compare what is left over.
  direction = PALETTE - BACKGROUND
  weight = np.clip(((core - BACKGROUND) * direction).sum(-1) / (direction ** 2).sum(-1), 0.6, 1.15)
  residual = np.linalg.norm(BACKGROUND + weight[:, None] * direction - core, axis=-1)
  return COLOR_NAMES[int(np.argmin(residual))]


def _template(shape: str, area: float, cy: float, cx: float, window, blur: float) -> tuple:
  extent = np.sqrt(area / FILL[shape])
  center_y = cy - CENTROID_DROP[shape] * extent
  t = shapes.coverage(shape, cx, center_y, extent, window)
  if blur > 0:
    t = ndimage.gaussian_filter(t, blur, mode="constant")
  return t, extent, center_y


def _segment(normalized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Labels of one seed per object, and the smoothed contrast against the background."""
  smooth = ndimage.gaussian_filter(normalized, (SMOOTHING, SMOOTHING, 0), mode="nearest")
  strength = np.linalg.norm(smooth - BACKGROUND, axis=-1)
  coarse, count = ndimage.label(strength > FOREGROUND_DISTANCE)
  if count == 0:
    return coarse, strength
  # Blur or JPEG ringing can bridge the gap between neighbours; at half of a blob's own peak
  # contrast the bridge is gone, and so each object keeps its own seed.
  peaks = ndimage.maximum(strength, coarse, np.arange(1, count + 1))
  threshold = np.concatenate([[np.inf], SPLIT_LEVEL * np.asarray(peaks)])[coarse]
  labels, _ = ndimage.label(strength > np.maximum(threshold, FOREGROUND_DISTANCE))
  return labels, strength


def _fit_shape(alpha: np.ndarray, region: np.ndarray, area: float, cy: float, cx: float,
               window) -> tuple[float, str, float, float]:
  """(error, shape, extent px, center y px) of the template closest to the alpha map."""
  best = None
  for shape in shapes.SHAPES:
    for blur in TEMPLATE_BLURS:
      t, extent, center_y = _template(shape, area, cy, cx, window, blur)
      # Mismatch inside the region, plus template mass that spills out of it.
      error = float((((alpha - t) ** 2) * region).sum() + ((t ** 2) * ~region).sum()) / area
      if best is None or error < best[0]:
        best = (error, shape, extent, center_y)
  return best


def detect(image: np.ndarray, min_area_fraction: float = MIN_AREA) -> list[Detection]:
  """Objects in a uint8 [H, W, 3] image (any size, square or not), left to right."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"detect: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  height, width = image.shape[:2]
  scale = min(height, width)
  pixels = image.astype(np.float32)
  normalized = pixels * (BACKGROUND / np.maximum(estimate_background(pixels), 1.0))
  labels, strength = _segment(normalized)
  if labels.max() == 0:
    return []
  # Each pixel belongs to the nearest seed, within a few pixels of it: that region holds the
  # object's blurred edges and nothing of its neighbours.
  distance, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
  owner = labels[nearest[0], nearest[1]]
  reach = max(2.0, 3.0 * scale / 64)
  min_area = min_area_fraction * FILL["circle"] * (shapes.SIZES["small"] * scale) ** 2
  detections = []
  for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
    pad = int(np.ceil(reach + 0.4 * max(rows.stop - rows.start, cols.stop - cols.start))) + 2
    r0, r1 = max(0, rows.start - pad), min(height, rows.stop + pad)
    c0, c1 = max(0, cols.start - pad), min(width, cols.stop + pad)
    region = (owner[r0:r1, c0:c1] == index) & (distance[r0:r1, c0:c1] <= reach)
    patch = normalized[r0:r1, c0:c1]
    own = labels[r0:r1, c0:c1] == index
    local = strength[r0:r1, c0:c1]
    core = np.median(patch[own & (local >= 0.8 * local[own].max())], axis=0)
    color = _classify_color(core)
    # A small blurred object never reaches its full color: measure coverage against the palette
    # color's contrast when the core falls short of it, so that the area is not inflated.
    direction = core - BACKGROUND
    full = PALETTE[COLOR_NAMES.index(color)] - BACKGROUND
    contrast = max(float(direction @ direction), float(full @ direction), 1.0)
    alpha = ((patch - BACKGROUND) @ direction) / contrast
    alpha = np.where(region, np.clip(alpha, -0.5, 1.5), 0.0)
    area = float(alpha.sum())  # unclipped below 0, so background noise averages out
    if area < min_area:
      continue
    weights = np.clip(alpha, 0, None)
    grid_y, grid_x = np.mgrid[r0:r1, c0:c1] + 0.5  # pixel centers
    cy = float((weights * grid_y).sum() / weights.sum())
    cx = float((weights * grid_x).sum() / weights.sum())
    error, shape, extent, center_y = _fit_shape(alpha, region, area, cy, cx,
                                                (r0, c0, r1 - r0, c1 - c0))
    detections.append(Detection(
        shape=shape, color=color,
        size="small" if extent / scale < SIZE_THRESHOLD else "large",
        x=cx / width, y=center_y / height, extent=extent / scale, area_px=area, fit=error))
  return sorted(detections, key=lambda d: (d.x, d.y))


# ---------------------------------------------------------------------------------------------
# Degradations and accuracy.

def degrade(image: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
  """A degraded copy: noise (sigma, 0-255 units), blur (sigma, px), color_shift (gain spread:
  per-channel gain in 1 +- level and offset in +- 100 * level), jpeg (quality)."""
  x = np.asarray(image).astype(np.float32)
  if kind == "noise":
    x = x + rng.normal(0.0, level, x.shape)
  elif kind == "blur":
    x = ndimage.gaussian_filter(x, (level, level, 0), mode="nearest")
  elif kind == "color_shift":
    gains = rng.uniform(1 - level, 1 + level, 3)
    offsets = rng.uniform(-100 * level, 100 * level, 3)
    x = x * gains + offsets
  elif kind == "jpeg":
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="JPEG", quality=int(level))
    return shapes.decode_image(buffer.getvalue())
  else:
    raise ValueError(f"degrade: kind={kind!r}; expected one of {tuple(DEGRADATIONS)}")
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def same_objects(detections: Iterable, objects: Iterable) -> bool:
  """Equal as multisets of (shape, color, size)."""
  return (collections.Counter(d.kind() for d in detections) ==
          collections.Counter(o.kind() for o in objects))


def judge_accuracy(seed: int, count: int, degradation: tuple[str, float] | None = None,
                   size: int = 64) -> float:
  """Fraction of `count` random scenes whose detected objects equal the ground truth (as a
  multiset of (shape, color, size)), optionally after degrade(image, *degradation)."""
  if count <= 0:
    raise ValueError(f"judge_accuracy: count={count}; expected > 0")
  scene_rng = np.random.default_rng([seed, 0])
  noise_rng = np.random.default_rng([seed, 1])
  correct = 0
  for _ in range(count):
    scene = shapes.sample_scene(scene_rng, size)
    image = shapes.render(scene)
    if degradation is not None:
      image = degrade(image, degradation[0], degradation[1], noise_rng)
    correct += same_objects(detect(image), scene.objects)
  return correct / count


# ---------------------------------------------------------------------------------------------
# GenEval-style scoring: the prompts, their specs and GenEval's rules on objects are the world's
# (data/worlds/geneval.py); the judge finds the objects in pixels.

MIN_BACKGROUND_FRACTION = 0.4  # a scene of this world is mostly background (objects <= ~45%)


def looks_like_scene(image: np.ndarray) -> bool:
  """Is this a picture of the world at all (a light background holding objects)? GenEval's
  rules only ask for objects to be present, so without this gate a noise image full of
  spurious detections would pass many prompts. Measured after a 3x3 box blur, so pixel noise
  on a real scene does not count against it."""
  blurred = ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1))
  near = np.linalg.norm(blurred - BACKGROUND, axis=-1) < FOREGROUND_DISTANCE
  return bool(near.mean() >= MIN_BACKGROUND_FRACTION)


def score(spec: dict, image: np.ndarray) -> bool:
  """Does the image satisfy the prompt's spec (GenEval rules on detected objects)? An image
  that does not look like a scene of the world satisfies nothing."""
  return looks_like_scene(image) and geneval.satisfied(spec, detect(image))
