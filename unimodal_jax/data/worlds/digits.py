"""The digits world: the handwritten digits that scikit-learn ships (1,797 real 8x8 scans), as
captioned images, and a classifier that judges generated digits.

Splits are fixed by index: 'train' (60%, the model's data), 'judge_train' (25%, the judge's
classifier), 'judge_test' (15%, the judge's own accuracy). The generator never sees the judge's
images, so the judge measures whether a generated digit reads as the asked-for digit.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from unimodal_jax.data import documents

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten digit {d}", "the number {w} written by hand",
             "a scanned handwritten {w}", "the digit {d}")
SPLITS = {"train": (0.0, 0.6), "judge_train": (0.6, 0.85), "judge_test": (0.85, 1.0)}


@functools.lru_cache(maxsize=1)
def _dataset():
  from sklearn.datasets import load_digits
  d = load_digits()
  order = np.random.default_rng(0).permutation(len(d.target))  # fixed, class-mixed
  return d.images[order].astype(np.float32), d.target[order].astype(np.int64)


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(images 8x8 in [0, 16], labels) of a split."""
  if name not in SPLITS:
    raise ValueError(f"digits split {name!r}; expected one of {sorted(SPLITS)}")
  images, labels = _dataset()
  lo, hi = SPLITS[name]
  a, b = int(lo * len(labels)), int(hi * len(labels))
  return images[a:b], labels[a:b]


def render(image8: np.ndarray, size: int = 32) -> np.ndarray:
  """8x8 scan in [0, 16] -> uint8 [size, size, 3]: dark ink on white, smoothly upsampled."""
  gray = (255 - np.clip(image8 / 16.0, 0, 1) * 255).astype(np.uint8)
  big = Image.fromarray(gray).resize((size, size), Image.BICUBIC)
  return np.repeat(np.asarray(big)[..., None], 3, axis=2)


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def caption(label: int, rng: np.random.Generator) -> str:
  template = TEMPLATES[rng.integers(len(TEMPLATES))]
  return template.format(d=label, w=WORDS[label])


def document(index: int, *, task: str = "caption", split_name: str = "train", size: int = 32,
             seed: int = 0) -> documents.Document:
  """Document `index` (wrapping around the split) for caption or text_to_image."""
  images, labels = split(split_name)
  i = index % len(labels)
  rng = np.random.default_rng([seed, index])
  image = documents.Segment.of_image(_png(render(images[i], size)))
  text = documents.Segment.of_text(caption(int(labels[i]), rng))
  if task == "caption":
    segments = [image, text]
  elif task == "text_to_image":
    segments = [text, image]
  else:
    raise ValueError(f"digits world: task {task!r}; expected caption or text_to_image")
  return documents.Document(f"digits/{split_name}/{index}", task, segments,
                            {"label": int(labels[i]), "split": split_name})


class DigitsJudge:
  """Reads which digit an image shows: an RBF support-vector classifier on 8x8 area-downsampled
  ink, trained on the judge's split only (98% on the held-out split's renders at 32 px; a
  logistic regression reached 95%)."""

  def __init__(self):
    from sklearn.svm import SVC
    images, labels = split("judge_train")
    self.model = SVC(gamma=0.16, C=10.0)
    self.model.fit(images.reshape(len(images), -1) / 16.0, labels)

  @staticmethod
  def to_scan(image: np.ndarray) -> np.ndarray:
    """Any [H, W, 3] uint8 image -> 8x8 ink in [0, 1] (the scans' layout)."""
    gray = np.asarray(Image.fromarray(image).convert("L").resize((8, 8), Image.BOX), np.float32)
    return 1.0 - gray / 255.0

  def predict(self, images: np.ndarray) -> np.ndarray:
    scans = np.stack([self.to_scan(im) for im in images])
    return self.model.predict(scans.reshape(len(scans), -1))

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(self.predict(images) == labels))
