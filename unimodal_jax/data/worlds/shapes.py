"""The "shapes" world: flat colored shapes on a light background, with text grounded in them.

The default data of the tiny multimodal experiments (ILLUME-style understanding and generation).
Every image comes from a `Scene` (a list of objects with shape, color, size and center), so each
task's ground truth is exact: captions, visual questions (POPE-style existence, counting, color,
position), edits (recolor, move, add, remove) and multi-image edit stories. The structured scene
rides along in each document's metadata, so generated images can be scored later by
unimodal_jax/eval/shapes_judge.py, which reads objects back out of pixels.

Coordinates: object centers (x, y) are fractions of the image width and height, with y growing
downwards; an object's extent (side of its bounding square) is SIZES[size] times the image size.
Everything is deterministic given a numpy Generator, so a seed reproduces documents byte for byte.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
from typing import Iterable

import numpy as np
from PIL import Image

from unimodal_jax.data.documents import Document, Segment

# ---------------------------------------------------------------------------------------------
# Vocabulary. The weights make the world's distribution non-uniform, so that POPE's "popular"
# negatives (the most frequent objects of the world) mean something.

SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_WEIGHTS = (0.35, 0.30, 0.20, 0.15)
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Chosen far apart in RGB (>= 85 in some channel between any two) and from the background.
COLORS = {
    "red": (210, 35, 45),
    "blue": (40, 90, 215),
    "green": (40, 160, 60),
    "yellow": (240, 215, 30),
    "orange": (245, 130, 25),
    "purple": (150, 60, 190),
}
COLOR_WEIGHTS = (0.25, 0.22, 0.18, 0.15, 0.11, 0.09)
SIZES = {"small": 0.18, "large": 0.30}  # extent as a fraction of the image size
BACKGROUND = (235, 235, 228)
CROSS_ARM = 0.4  # arm thickness of a cross, as a fraction of its extent
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")

BORDER_MARGIN = 0.04  # objects keep this far (fraction of the image) from the edges
GAP_FRACTION = 0.07  # and this far from each other (at least GAP_MIN_PX pixels)
GAP_MIN_PX = 3
RELATION_MARGIN = 0.1  # centers must differ this much for "left of" etc. to be asked or told
REPEAT_PROBABILITY = 0.3  # a new object copies an earlier one's shape and color (for counting)

RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
EDIT_KINDS = ("recolor", "move", "add", "remove")
POPE_STYLES = ("random", "popular", "adversarial")
QUESTION_TYPES = ("existence", "counting", "color", "position")
# New tasks go at the end: a task's position seeds its documents' generators.
DOCUMENT_TASKS = ("caption", "text_to_image", "conversation", "edit", "interleaved", "dialogue",
                  "story")
STORY_CONNECTIVES = ("Now", "Then", "Next", "After that")
# Words that name one of several look-alikes by position, and the key it is least along.
_EXTREMES = {"leftmost": lambda o: o.x, "rightmost": lambda o: -o.x, "topmost": lambda o: o.y,
             "bottommost": lambda o: -o.y}


class EditError(ValueError):
  """An edit that the scene does not allow (nothing to refer to, no room to place an object)."""


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  color: str
  size: str  # "small" or "large"
  x: float  # center, fraction of the image width
  y: float  # center, fraction of the image height (downwards)

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"Obj.shape={self.shape!r}; expected one of {SHAPES}")
    if self.color not in COLORS:
      raise ValueError(f"Obj.color={self.color!r}; expected one of {tuple(COLORS)}")
    if self.size not in SIZES:
      raise ValueError(f"Obj.size={self.size!r}; expected one of {tuple(SIZES)}")

  @property
  def extent(self) -> float:
    return SIZES[self.size]

  @property
  def center(self) -> tuple[float, float]:
    return (self.x, self.y)

  def box(self) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the bounding square, fractions of the image."""
    half = self.extent / 2
    return (self.x - half, self.y - half, self.x + half, self.y + half)

  def kind(self) -> tuple[str, str, str]:
    return (self.shape, self.color, self.size)

  def to_dict(self) -> dict:
    return {"shape": self.shape, "color": self.color, "size": self.size,
            "x": float(self.x), "y": float(self.y)}


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Obj, ...]
  size: int = 64  # images are size x size pixels

  def __post_init__(self):
    object.__setattr__(self, "objects", tuple(self.objects))
    if not isinstance(self.size, int) or self.size < 16:
      raise ValueError(f"Scene.size={self.size!r}; expected an int >= 16 (pixels)")


def describe(scene: Scene) -> dict:
  """The structured, JSON-serializable description stored in document metadata."""
  return {"size": scene.size, "objects": [o.to_dict() for o in scene.objects]}


def scene_from_description(description: dict) -> Scene:
  try:
    objects = [Obj(d["shape"], d["color"], d["size"], float(d["x"]), float(d["y"]))
               for d in description["objects"]]
    return Scene(tuple(objects), int(description["size"]))
  except (KeyError, TypeError) as e:
    raise ValueError(f"scene description is malformed ({e!r}): {description!r}") from e


# ---------------------------------------------------------------------------------------------
# Geometry and sampling.

def _gap(image_size: int) -> float:
  return max(GAP_FRACTION, GAP_MIN_PX / image_size)


def _inside_image(obj: Obj) -> bool:
  x0, y0, x1, y1 = obj.box()
  return min(x0, y0) >= BORDER_MARGIN and max(x1, y1) <= 1 - BORDER_MARGIN


def _separated(a: Obj, b: Obj, image_size: int) -> bool:
  # Bounding squares apart by the gap along at least one axis: conservative for all shapes.
  reach = (a.extent + b.extent) / 2 + _gap(image_size)
  return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def fits(obj: Obj, others: Iterable[Obj], image_size: int) -> bool:
  """Inside the image and apart from every other object."""
  return _inside_image(obj) and all(_separated(obj, o, image_size) for o in others)


def _random_attributes(rng: np.random.Generator, existing: list[Obj]) -> tuple[str, str, str]:
  if existing and rng.random() < REPEAT_PROBABILITY:
    model = existing[int(rng.integers(len(existing)))]
    shape, color = model.shape, model.color
  else:
    shape = SHAPES[int(rng.choice(len(SHAPES), p=SHAPE_WEIGHTS))]
    color = tuple(COLORS)[int(rng.choice(len(COLORS), p=COLOR_WEIGHTS))]
  size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
  return shape, color, size


def place(rng: np.random.Generator, shape: str, color: str, size: str, others: list[Obj],
          image_size: int, tries: int = 60) -> Obj | None:
  """An object with these attributes at a random free spot, or None when none was found."""
  lo = BORDER_MARGIN + SIZES[size] / 2
  for _ in range(tries):
    x, y = rng.uniform(lo, 1 - lo, size=2)
    obj = Obj(shape, color, size, float(x), float(y))
    if fits(obj, others, image_size):
      return obj
  return None


def sample_scene(rng: np.random.Generator, size: int = 64, min_objects: int = 1,
                 max_objects: int = 4) -> Scene:
  """A random scene of min..max non-overlapping objects inside a size x size image."""
  if not 1 <= min_objects <= max_objects <= 6:
    raise ValueError(f"sample_scene: need 1 <= min_objects <= max_objects <= 6, got "
                     f"min_objects={min_objects}, max_objects={max_objects}")
  count = int(rng.integers(min_objects, max_objects + 1))
  for _ in range(100):
    objects: list[Obj] = []
    for _ in range(count):
      obj = place(rng, *_random_attributes(rng, objects), objects, size)
      if obj is None:
        break
      objects.append(obj)
    else:
      return Scene(tuple(objects), size)
  raise RuntimeError(f"sample_scene: could not place {count} objects in a {size}px image")


def category_frequency(shape: str, color: str) -> float:
  """Prior frequency of a (shape, color) object in this world (up to normalization)."""
  return SHAPE_WEIGHTS[SHAPES.index(shape)] * COLOR_WEIGHTS[tuple(COLORS).index(color)]


# ---------------------------------------------------------------------------------------------
# Rendering.

def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
  """Whether offsets (dx, dy) from the center lie inside a shape of half-extent `half`."""
  if shape == "circle":
    return dx * dx + dy * dy <= half * half
  if shape == "square":
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  if shape == "triangle":  # apex up, base down, base width = height = extent
    return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
  if shape == "cross":
    arm = half * CROSS_ARM
    adx, ady = np.abs(dx), np.abs(dy)
    return ((adx <= half) & (ady <= arm)) | ((adx <= arm) & (ady <= half))
  raise ValueError(f"shape_mask: unknown shape {shape!r}; expected one of {SHAPES}")


def coverage(shape: str, cx: float, cy: float, extent: float, window: tuple[int, int, int, int],
             supersample: int = 4) -> np.ndarray:
  """Fraction of each pixel of window (row0, col0, rows, cols) covered by the shape.

  Pixel (r, c) spans [c, c+1) x [r, r+1); center and extent are in pixels. Supersampling on an
  s x s grid per pixel gives the anti-aliased edges.
  """
  row0, col0, rows, cols = window
  offsets = (np.arange(supersample) + 0.5) / supersample
  ys = (row0 + np.arange(rows)[:, None] + offsets[None, :]).reshape(-1)
  xs = (col0 + np.arange(cols)[:, None] + offsets[None, :]).reshape(-1)
  inside = shape_mask(shape, xs[None, :] - cx, ys[:, None] - cy, extent / 2)
  return inside.reshape(rows, supersample, cols, supersample).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
  """uint8 [size, size, 3]: the objects, anti-aliased, on the plain background."""
  n = scene.size
  image = np.empty((n, n, 3), np.float32)
  image[:] = BACKGROUND
  for obj in scene.objects:
    extent = obj.extent * n
    cx, cy = obj.x * n, obj.y * n
    row0, col0 = max(0, int(cy - extent / 2) - 1), max(0, int(cx - extent / 2) - 1)
    row1, col1 = min(n, int(cy + extent / 2) + 2), min(n, int(cx + extent / 2) + 2)
    alpha = coverage(obj.shape, cx, cy, extent, (row0, col0, row1 - row0, col1 - col0))[..., None]
    patch = image[row0:row1, col0:col1]
    patch[:] = patch * (1 - alpha) + np.asarray(COLORS[obj.color], np.float32) * alpha
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
  array = np.asarray(array)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
    raise ValueError(f"encode_png: expected uint8 [H, W, 3], got {array.dtype} {array.shape}")
  buffer = io.BytesIO()
  Image.fromarray(array, "RGB").save(buffer, format="PNG", compress_level=6)
  return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """PNG or JPEG bytes -> uint8 [H, W, 3]."""
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Text: phrases, captions.

def article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def noun_phrase(count: int, *words: str) -> str:
  """noun_phrase(2, "red", "circle") -> "two red circles"; count 1 gets an article."""
  *adjectives, shape = words
  if count == 1:
    text = " ".join(words)
    return f"{article(text)} {text}"
  number = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
  return " ".join([number, *adjectives, PLURALS[shape]])


def join_phrases(phrases: list[str]) -> str:
  if len(phrases) <= 1:
    return "".join(phrases)
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _grouped(objects: Iterable[Obj], key) -> list[tuple[tuple, int]]:
  # Groups in left-to-right order of their leftmost member, so captions read like the picture.
  counts = collections.Counter()
  first_x = {}
  for obj in objects:
    k = key(obj)
    counts[k] += 1
    first_x[k] = min(first_x.get(k, 2.0), obj.x)
  return [(k, counts[k]) for k in sorted(counts, key=lambda k: (first_x[k], k))]


def relations(a: Obj, b: Obj) -> set[str]:
  """Relations of a to b that hold with the margin (decided from centers)."""
  out = set()
  if b.x - a.x > RELATION_MARGIN:
    out.add("left of")
  if a.x - b.x > RELATION_MARGIN:
    out.add("right of")
  if b.y - a.y > RELATION_MARGIN:
    out.add("above")
  if a.y - b.y > RELATION_MARGIN:
    out.add("below")
  return out


def _relation_words(relation: str) -> str:
  return {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
  """Several captions of the whole scene (every object is mentioned, counts spelled out)."""
  objects = scene.objects
  if not objects:
    return ["an empty picture", "a plain light background with nothing on it"]
  listing = join_phrases([noun_phrase(n, *k) for k, n in
                          _grouped(objects, lambda o: (o.color, o.shape))])
  sized = join_phrases([noun_phrase(n, *k) for k, n in
                        _grouped(objects, lambda o: (o.size, o.color, o.shape))])
  groups = [noun_phrase(n, *k) for k, n in _grouped(objects, lambda o: (o.color, o.shape))]
  shuffled = join_phrases([groups[i] for i in rng.permutation(len(groups))])
  prefix = ("a picture of", "an image of", "a drawing of", "a photo of")[int(rng.integers(4))]
  total = len(objects)
  out = [listing, f"{prefix} {sized}", shuffled,
         f"{NUMBER_WORDS[total]} {'shape' if total == 1 else 'shapes'}: {listing}"]
  if total == 2:
    a, b = sorted(objects, key=lambda o: o.x)
    rel = sorted(relations(a, b))
    if rel:
      relation = rel[int(rng.integers(len(rel)))]
      out.append(f"{noun_phrase(1, a.size, a.color, a.shape)} {_relation_words(relation)} "
                 f"{noun_phrase(1, b.size, b.color, b.shape)}")
  return out


# ---------------------------------------------------------------------------------------------
# Questions. Each is {"question", "answer", "type", "style", "target"}; "style" is the POPE style
# for existence questions and None otherwise; "target" is the structured thing asked about.

def referring_expression(scene: Scene, index: int) -> str | None:
  """Shortest phrase ("red circle", "small red circle") that picks out exactly this object."""
  obj = scene.objects[index]
  same = [o for o in scene.objects if (o.color, o.shape) == (obj.color, obj.shape)]
  if len(same) == 1:
    return f"{obj.color} {obj.shape}"
  if sum(o.size == obj.size for o in same) == 1:
    return f"{obj.size} {obj.color} {obj.shape}"
  # Look-alikes: name the one that is clearly extreme along an axis ("leftmost red circle").
  same_size = [o for o in same if o.size == obj.size]
  for group, words in ((same, (obj.color, obj.shape)),
                       (same_size, (obj.size, obj.color, obj.shape))):
    others = [o for o in group if o is not obj]
    for word, key in _EXTREMES.items():
      if all(key(o) - key(obj) > RELATION_MARGIN for o in others):
        return " ".join((word, *words))
  return None


def _referable(scene: Scene) -> list[int]:
  return [i for i in range(len(scene.objects)) if referring_expression(scene, i) is not None]


def _categories_present(scene: Scene) -> set[tuple[str, str]]:
  return {(o.shape, o.color) for o in scene.objects}


def _absent_candidates(scene: Scene, style: str) -> list[tuple[str, str]]:
  present = _categories_present(scene)
  absent = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in present]
  if style == "random":
    return absent
  if style == "popular":  # POPE: the most frequent objects of the dataset that are not here
    absent.sort(key=lambda sc: -category_frequency(*sc))
    return absent[:3]
  if style == "adversarial":  # near misses of what is here: same shape or same color
    near = [(s, c) for s, c in absent
            if any(s == ps or c == pc for ps, pc in present)]
    return near or absent
  raise ValueError(f"POPE style {style!r}; expected one of {POPE_STYLES}")


def existence_question(scene: Scene, rng: np.random.Generator, style: str,
                       present: bool) -> dict:
  """POPE: "Is there a red circle in the image?" about a present or an absent object."""
  if style not in POPE_STYLES:
    raise ValueError(f"existence_question: style={style!r}; expected one of {POPE_STYLES}")
  if present:
    if not scene.objects:
      raise ValueError("existence_question: present=True needs a scene with objects")
    candidates = sorted(_categories_present(scene))
  else:
    candidates = _absent_candidates(scene, style)
  shape, color = candidates[int(rng.integers(len(candidates)))]
  text = f"{color} {shape}"
  return {"question": f"Is there {article(text)} {text} in the image?",
          "answer": "yes" if present else "no", "type": "existence", "style": style,
          "target": {"shape": shape, "color": color}}


def pope_questions(scene: Scene, rng: np.random.Generator, style: str,
                   pairs: int = 1) -> list[dict]:
  """`pairs` yes-questions and `pairs` no-questions of one POPE style, shuffled."""
  out = [existence_question(scene, rng, style, present)
         for present in [True, False] * pairs]
  return [out[i] for i in rng.permutation(len(out))]


def count_matching(objects: Iterable[Obj], target: dict) -> int:
  """How many objects match every attribute named in target (shape, color, size)."""
  return sum(all(getattr(o, k) == v for k, v in target.items()) for o in objects)


def counting_question(scene: Scene, rng: np.random.Generator) -> dict:
  """"How many red circles are there?" (sometimes about an absent kind: "zero")."""
  form = int(rng.integers(4))
  if scene.objects and rng.random() < 0.9:
    model = scene.objects[int(rng.integers(len(scene.objects)))]
    shape, color = model.shape, model.color
  else:
    absent = _absent_candidates(scene, "random")
    shape, color = absent[int(rng.integers(len(absent)))]
  if form == 0:
    target, noun = {"shape": shape, "color": color}, f"{color} {PLURALS[shape]}"
  elif form == 1:
    target, noun = {"shape": shape}, PLURALS[shape]
  elif form == 2:
    target, noun = {"color": color}, f"{color} shapes"
  else:
    target, noun = {}, "shapes"
  count = count_matching(scene.objects, target)
  answer = NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)
  return {"question": f"How many {noun} are there?", "answer": answer, "type": "counting",
          "style": None, "target": target}


def color_question(scene: Scene, rng: np.random.Generator) -> dict | None:
  """"What color is the square?", only about an object its words pick out; else None."""
  options = []
  for obj in scene.objects:
    if sum(o.shape == obj.shape for o in scene.objects) == 1:
      options.append(({"shape": obj.shape}, obj.shape, obj.color))
    elif sum((o.shape, o.size) == (obj.shape, obj.size) for o in scene.objects) == 1:
      options.append(({"shape": obj.shape, "size": obj.size}, f"{obj.size} {obj.shape}",
                      obj.color))
  if not options:
    return None
  target, noun, color = options[int(rng.integers(len(options)))]
  return {"question": f"What color is the {noun}?", "answer": color, "type": "color",
          "style": None, "target": target}


def position_question(scene: Scene, rng: np.random.Generator,
                      ask_yes: bool | None = None) -> dict | None:
  """"Is the red circle to the left of the blue square?" (yes or no, half each, unless
  `ask_yes` says which); with one nameable object, "Is the red circle in the left half of the
  image?". None if neither fits."""
  referable = _referable(scene)
  pairs = [(i, j) for i in referable for j in referable
           if i != j and relations(scene.objects[i], scene.objects[j])]
  coin = bool(rng.random() < 0.5)  # drawn either way: the documents' streams stay as they were
  ask_yes = coin if ask_yes is None else ask_yes
  if pairs:
    i, j = pairs[int(rng.integers(len(pairs)))]
    true = sorted(relations(scene.objects[i], scene.objects[j]))
    relation = true[int(rng.integers(len(true)))]
    asked = relation if ask_yes else OPPOSITE[relation]
    a, b = referring_expression(scene, i), referring_expression(scene, j)
    return {"question": f"Is the {a} {_relation_words(asked)} the {b}?",
            "answer": "yes" if ask_yes else "no", "type": "position", "style": None,
            "target": {"object": scene.objects[i].to_dict(), "relation": asked,
                       "reference": scene.objects[j].to_dict()}}
  halves = []
  for i in referable:
    obj = scene.objects[i]
    if abs(obj.x - 0.5) > RELATION_MARGIN:
      halves.append((i, "left" if obj.x < 0.5 else "right"))
    if abs(obj.y - 0.5) > RELATION_MARGIN:
      halves.append((i, "top" if obj.y < 0.5 else "bottom"))
  if not halves:
    return None
  i, half = halves[int(rng.integers(len(halves)))]
  other = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
  asked = half if ask_yes else other[half]
  return {"question": f"Is the {referring_expression(scene, i)} in the {asked} half of the image?",
          "answer": "yes" if ask_yes else "no", "type": "position", "style": None,
          "target": {"object": scene.objects[i].to_dict(), "half": asked}}


def ask(scene: Scene, rng: np.random.Generator, kind: str, style: str | None = None,
        present: bool = True) -> dict | None:
  """One question of a type; None when the scene does not allow it (color, position)."""
  if kind == "existence":
    return existence_question(scene, rng, style or "random", present)
  if kind == "counting":
    return counting_question(scene, rng)
  if kind == "color":
    return color_question(scene, rng)
  if kind == "position":
    return position_question(scene, rng)
  raise ValueError(f"ask: kind={kind!r}; expected one of {QUESTION_TYPES}")


def questions(scene: Scene, rng: np.random.Generator) -> list[dict]:
  """A yes and a no question of each POPE style, then counting, color and position when they
  apply."""
  out = []
  for style in POPE_STYLES:
    out += pope_questions(scene, rng, style)
  for kind in ("counting", "color", "position"):
    q = ask(scene, rng, kind)
    if q is not None:
      out.append(q)
  return out


# ---------------------------------------------------------------------------------------------
# Edits.

MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def edit(scene: Scene, rng: np.random.Generator, kind: str) -> tuple[Scene, str]:
  """Apply one edit; returns (edited scene, instruction). Only the named change happens: recolor
  changes one object's color, move one object's center (along one axis), add appends one
  object, remove deletes one. Raises EditError when the scene does not allow the edit."""
  objects = list(scene.objects)
  if kind == "add":
    shape, color, size = _random_attributes(rng, [])
    obj = place(rng, shape, color, size, objects, scene.size, tries=200)
    if obj is None and size == "large":  # a crowded scene may still have room for a small one
      size = "small"
      obj = place(rng, shape, color, size, objects, scene.size, tries=200)
    if obj is None:
      raise EditError(f"edit add: no room for a {size} {shape} in this {len(objects)}-object scene")
    verb = ("add", "draw", "insert")[int(rng.integers(3))]
    return Scene(tuple(objects + [obj]), scene.size), f"{verb} {noun_phrase(1, size, color, shape)}"
  if kind not in EDIT_KINDS:
    raise ValueError(f"edit: kind={kind!r}; expected one of {EDIT_KINDS}")
  referable = _referable(scene)
  if not referable:
    raise EditError(f"edit {kind}: no object in the scene can be named unambiguously")
  if kind == "remove":
    if len(objects) < 2:
      raise EditError("edit remove: the scene has one object; removing it leaves nothing")
    index = referable[int(rng.integers(len(referable)))]
    ref = referring_expression(scene, index)
    del objects[index]
    verb = ("remove", "delete", "take away")[int(rng.integers(3))]
    return Scene(tuple(objects), scene.size), f"{verb} the {ref}"
  if kind == "recolor":
    index = referable[int(rng.integers(len(referable)))]
    obj = objects[index]
    others = [c for c in COLORS if c != obj.color]
    color = others[int(rng.integers(len(others)))]
    ref = referring_expression(scene, index)
    objects[index] = dataclasses.replace(obj, color=color)
    template = ("make the {ref} {color}", "change the color of the {ref} to {color}",
                "paint the {ref} {color}")[int(rng.integers(3))]
    return Scene(tuple(objects), scene.size), template.format(ref=ref, color=color)
  # move: along one axis, far enough that the direction is unambiguous
  for _ in range(100):
    index = referable[int(rng.integers(len(referable)))]
    direction = tuple(MOVES)[int(rng.integers(len(MOVES)))]
    distance = float(rng.uniform(0.2, 0.5))
    obj = objects[index]
    dx, dy = MOVES[direction]
    moved = dataclasses.replace(obj, x=obj.x + dx * distance, y=obj.y + dy * distance)
    if fits(moved, objects[:index] + objects[index + 1:], scene.size):
      ref = referring_expression(scene, index)
      objects[index] = moved
      phrase = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
      return Scene(tuple(objects), scene.size), f"move the {ref} {phrase[direction]}"
  raise EditError("edit move: no object could move 0.2-0.5 of the image along an axis")


def edit_any(scene: Scene, rng: np.random.Generator,
             kinds: Iterable[str]) -> tuple[Scene, str, str]:
  """The first of `kinds` the scene allows: (edited scene, instruction, kind)."""
  reasons = []
  for kind in kinds:
    try:
      new_scene, instruction = edit(scene, rng, kind)
      return new_scene, instruction, kind
    except EditError as e:
      reasons.append(str(e))
  raise EditError("; ".join(reasons))


def _shuffled_kinds(rng: np.random.Generator) -> list[str]:
  return [EDIT_KINDS[i] for i in rng.permutation(len(EDIT_KINDS))]


def story_opening(scene: Scene, rng: np.random.Generator) -> str:
  """A story's first sentence: the whole scene (every object, counts spelled out)."""
  return f"This picture shows {captions(scene, rng)[0]}."


def edit_story(rng: np.random.Generator, steps: int = 3, size: int = 64
               ) -> list[tuple[str, Scene]]:
  """A scene, then `steps` edits of it: [(text, scene)] where each text leads to its picture."""
  scene = sample_scene(rng, size, 1, 3)
  story = [(story_opening(scene, rng), scene)]
  for step in range(steps):
    scene, instruction, _ = edit_any(scene, rng, _shuffled_kinds(rng))
    connective = STORY_CONNECTIVES[min(step, len(STORY_CONNECTIVES) - 1)]
    story.append((f"{connective}, {instruction}.", scene))
  return story


_DIRECTIONS = {"to the left": "left", "to the right": "right", "up": "up", "down": "down"}


def read_instruction(text: str) -> dict | None:
  """The edit an instruction of this world asks for (what `edit` wrote, read back), or None when
  the text is not one. A story's wrapping ("Now, ... .") is accepted. Returns {"kind", "ref"
  (the object named: {"extreme", "size", "color", "shape"}, None for add), "color" (recolor),
  "direction" (move), "new" (add: {"size", "color", "shape"})}."""
  words = text.strip().rstrip(".").strip()
  for connective in STORY_CONNECTIVES:
    if words.startswith(connective + ", "):
      words = words[len(connective) + 2:]
      break
  words = words.split()

  def ref(tokens):
    tokens = list(tokens)
    out = {"extreme": None, "size": None}
    if tokens and tokens[0] in _EXTREMES:
      out["extreme"] = tokens.pop(0)
    if tokens and tokens[0] in SIZES:
      out["size"] = tokens.pop(0)
    if len(tokens) == 2 and tokens[0] in COLORS and tokens[1] in SHAPES:
      return dict(out, color=tokens[0], shape=tokens[1])
    return None

  n = len(words)
  if n == 5 and words[0] in ("add", "draw", "insert") and words[1] in ("a", "an") and (
      words[2] in SIZES and words[3] in COLORS and words[4] in SHAPES):
    return {"kind": "add", "ref": None,
            "new": {"size": words[2], "color": words[3], "shape": words[4]}}
  for verb in (["remove"], ["delete"], ["take", "away"]):
    k = len(verb)
    if words[:k] == verb and words[k:k + 1] == ["the"] and (r := ref(words[k + 1:])):
      return {"kind": "remove", "ref": r}
  if n >= 4 and words[0] in ("make", "paint") and words[1] == "the" and words[-1] in COLORS and (
      r := ref(words[2:-1])):
    return {"kind": "recolor", "ref": r, "color": words[-1]}
  if (words[:5] == ["change", "the", "color", "of", "the"] and n >= 9
      and words[-2] == "to" and words[-1] in COLORS and (r := ref(words[5:-2]))):
    return {"kind": "recolor", "ref": r, "color": words[-1]}
  if words[:2] == ["move", "the"]:
    for phrase, direction in _DIRECTIONS.items():
      tail = phrase.split()
      if words[-len(tail):] == tail and (r := ref(words[2:-len(tail)])):
        return {"kind": "move", "ref": r, "direction": direction}
  return None


def apply_instruction(objects: list, instruction: dict) -> list | None:
  """`objects` (Obj or the judge's detections: shape, color, size, x, y) after a read
  instruction, or None when its referring expression names no single object of them (as
  `referring_expression` names one). Positions are not tracked: a moved object stays where it
  was, an added one has none (x = y = None), so compare the result by kind."""
  objects = list(objects)
  if instruction["kind"] == "add":
    new = instruction["new"]
    return objects + [dataclasses.replace(Obj(new["shape"], new["color"], new["size"], 0.0, 0.0),
                                          x=None, y=None)]
  r = instruction["ref"]
  same = [i for i, o in enumerate(objects) if (o.color, o.shape) == (r["color"], r["shape"])
          and (r["size"] is None or o.size == r["size"])]
  if r["extreme"] is not None:
    key = _EXTREMES[r["extreme"]]
    same = [i for i in same if all(key(objects[j]) - key(objects[i]) > RELATION_MARGIN
                                   for j in same if j != i)]
  if len(same) != 1:
    return None
  i = same[0]
  if instruction["kind"] == "remove":
    return objects[:i] + objects[i + 1:]
  if instruction["kind"] == "recolor":
    objects[i] = dataclasses.replace(objects[i], color=instruction["color"])
  return objects


# ---------------------------------------------------------------------------------------------
# Documents.

# At most this many questions in a "dialogue" document: with a 16-token image it fits in 128 tokens.
DIALOGUE_TURNS = 6
# Conversation documents cycle through these, so types and styles are balanced by construction.
QUESTION_PLAN = (("existence", "random"), ("existence", "popular"),
                 ("existence", "adversarial"), ("counting", None), ("color", None),
                 ("position", None))


def _document_rng(seed: int, task: str, index: int) -> np.random.Generator:
  # One generator per document: documents do not depend on `count`, a prefix is a prefix.
  return np.random.default_rng([int(seed), DOCUMENT_TASKS.index(task), int(index)])


def _image(scene: Scene, role: str = "") -> Segment:
  return Segment.of_image(encode_png(render(scene)), role=role)


def make_document(seed: int, index: int, task: str, size: int = 64) -> Document:
  """Document number `index` of the stream (seed, task); see make_documents."""
  if task not in DOCUMENT_TASKS:
    raise ValueError(f"shapes document task {task!r}; expected one of {DOCUMENT_TASKS}")
  rng = _document_rng(seed, task, index)
  doc_id = f"shapes/{task}/{seed}/{index:06d}"
  meta = {"world": "shapes", "seed": int(seed), "index": int(index)}
  if task in ("caption", "text_to_image"):
    scene = sample_scene(rng, size)
    options = captions(scene, rng)
    caption = options[int(rng.integers(len(options)))]
    meta.update(scene=describe(scene), caption=caption)
    segments = ([_image(scene), Segment.of_text(caption)] if task == "caption" else
                [Segment.of_text(caption), _image(scene)])
    return Document(doc_id, task, segments, meta).validate()
  if task == "conversation":
    kind, style = QUESTION_PLAN[index % len(QUESTION_PLAN)]
    present = (index // len(QUESTION_PLAN)) % 2 == 0
    for _ in range(100):
      scene = sample_scene(rng, size)
      question = ask(scene, rng, kind, style, present)
      if question is not None:
        break
    else:
      raise RuntimeError(f"{doc_id}: no scene allowed a {kind} question in 100 tries")
    meta.update(scene=describe(scene), question_type=kind, pope_style=question["style"],
                answer=question["answer"], target=question["target"])
    segments = [_image(scene, "user"), Segment.of_text(question["question"], "user"),
                Segment.of_text(question["answer"], "assistant")]
    return Document(doc_id, "conversation", segments, meta).validate()
  if task == "dialogue":
    # A conversation of several turns about one scene: one image read buys up to DIALOGUE_TURNS
    # answers (a "conversation" document buys one). The questions are those `questions` allows,
    # in random order; a question asked twice stays once (its repeat could be answered by
    # copying), and as many "no" as "yes" existence questions stay, so answers carry no prior
    # (some dialogues end up with none; the one-question documents carry them too).
    scene = sample_scene(rng, size)
    asked = list({q["question"]: q for q in questions(scene, rng)}.values())
    asked = [asked[i] for i in rng.permutation(len(asked))][:DIALOGUE_TURNS]
    by_answer = {a: [i for i, q in enumerate(asked) if q["type"] == "existence" and
                     q["answer"] == a] for a in ("yes", "no")}
    keep = min(map(len, by_answer.values()))
    extra = set(by_answer["yes"][keep:] + by_answer["no"][keep:])
    asked = [q for i, q in enumerate(asked) if i not in extra]
    segments = [_image(scene, "user")]
    for q in asked:
      segments += [Segment.of_text(q["question"], "user"),
                   Segment.of_text(q["answer"], "assistant")]
    meta.update(scene=describe(scene), questions=asked)
    return Document(doc_id, "conversation", segments, meta).validate()  # a multi-turn one
  if task == "edit":
    scene = sample_scene(rng, size, 2, 4)
    # Kinds rotate with the index (balanced); the next ones stand in when the scene forbids it.
    start = index % len(EDIT_KINDS)
    order = EDIT_KINDS[start:] + EDIT_KINDS[:start]
    edited, instruction, kind = edit_any(scene, rng, order)
    meta.update(source_scene=describe(scene), scene=describe(edited), edit_kind=kind,
                instruction=instruction)
    segments = [_image(scene, "user"), Segment.of_text(instruction, "user"),
                _image(edited, "assistant")]
    return Document(doc_id, "edit", segments, meta).validate()
  # interleaved: an edit story of three edits; story: of one (two pictures, the length a tiny
  # model's context holds with each picture written and read)
  story = edit_story(rng, steps=3 if task == "interleaved" else 1, size=size)
  segments = []
  for text, scene in story:
    segments += [Segment.of_text(text), _image(scene)]
  meta.update(scenes=[describe(s) for _, s in story], texts=[t for t, _ in story])
  return Document(doc_id, "interleaved", segments, meta).validate()


def held_out_questions(seed: int, per_style: int, per_kind: int, size: int) -> list[Document]:
  """The evaluation's question documents: the first `per_style` existence questions of each
  POPE style and `per_kind` of each other kind in the (seed, "conversation") stream."""
  wanted = collections.Counter()
  docs = []
  i = 0
  quota = lambda kind: per_style if kind[0] == "existence" else per_kind
  while any(wanted[k] < quota(k) for k in QUESTION_PLAN):
    kind = QUESTION_PLAN[i % len(QUESTION_PLAN)]
    if wanted[kind] < quota(kind):
      docs.append(make_document(seed, i, "conversation", size=size))
      wanted[kind] += 1
    i += 1
  return docs


def make_documents(seed: int, count: int, task: str, size: int = 64) -> list[Document]:
  """`count` documents of one task, fully determined by (seed, task, size); metadata holds the
  structured scene(s) so a judge can score generations. Tasks: DOCUMENT_TASKS."""
  if task not in DOCUMENT_TASKS:
    raise ValueError(f"make_documents: task={task!r}; expected one of {DOCUMENT_TASKS}")
  if count < 0:
    raise ValueError(f"make_documents: count={count}; expected >= 0")
  docs = [make_document(seed, i, task, size) for i in range(count)]
  json.dumps([d.metadata for d in docs])  # metadata must stay JSON-serializable
  return docs
