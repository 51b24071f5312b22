"""GenEval-style prompts in the shapes world ("a photo of two red circles", "a photo of a square
left of a cross"): their specs, GenEval's rules for when a set of objects satisfies a spec, scenes
drawn to satisfy them, and text-to-image documents made of a prompt and such a scene. The judge
(eval/shapes_judge.py) applies the same rules to the objects it detects in generated pixels. Training on one seed and evaluating generation on another
keeps the GenEval-style scores held out: the prompts' wording is shared, the scenes are not.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unimodal_jax.data.documents import Document, Segment
from unimodal_jax.data.worlds import shapes


# A spec mirrors GenEval's metadata:
#   {"include": [{"shape", "count", "color"?, "position"?: [relation, include index]}],
#    "exclude": [{"shape", "count"}]}   (exclude: fewer than `count` of that shape)

GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position",
                      "color_attr")
POSITION_THRESHOLD = 0.1  # GenEval's: box centers must differ by more than 0.1 x box sizes


def relative_position(a, b, threshold: float = POSITION_THRESHOLD,
                      cosine: float = 0.5) -> set[str]:
  """GenEval's relations of a to b from boxes (objects with .box()): the center offset less
  threshold x (sum of box sizes), normalized; an axis counts when its share exceeds `cosine`."""
  ax0, ay0, ax1, ay1 = a.box()
  bx0, by0, bx1, by1 = b.box()
  offset = np.array([(ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2])
  dims = np.array([(ax1 - ax0) + (bx1 - bx0), (ay1 - ay0) + (by1 - by0)])
  revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
  if np.all(np.abs(revised) < 1e-3):
    return set()
  dx, dy = revised / np.linalg.norm(offset)
  out = set()
  if dx < -cosine:
    out.add("left of")
  if dx > cosine:
    out.add("right of")
  if dy < -cosine:
    out.add("above")
  if dy > cosine:
    out.add("below")
  return out


def satisfied(spec: dict, objects: Sequence) -> bool:
  """GenEval's verdict for a list of objects (Detections or shapes.Obj).

  As in GenEval: each include needs `count` objects of its shape, of its color if it names one;
  a position include needs its objects in the relation to every object matched by the include it
  points at; an exclude fails when `count` or more of its shape are present. One deliberate
  difference: GenEval checks colors among its `count` most confident boxes of the class, here
  among all objects of the class (there are no confidences), largest first.
  """
  matched_groups: list[list | None] = []
  correct = True
  for req in spec.get("include", []):
    found = [o for o in objects if o.shape == req["shape"]
             and ("color" not in req or o.color == req["color"])]
    found = sorted(found, key=lambda o: (-o.extent, o.x, o.y))[:req["count"]]
    matched = len(found) >= req["count"]
    if matched and "position" in req:
      relation, target = req["position"]
      group = matched_groups[target] if target < len(matched_groups) else None
      matched = group is not None and all(relation in relative_position(o, t)
                                          for o in found for t in group)
    matched_groups.append(found if matched else None)
    correct &= matched
  for req in spec.get("exclude", []):
    correct &= sum(o.shape == req["shape"] for o in objects) < req["count"]
  return bool(correct)


def _pick(rng: np.random.Generator, options: Sequence, count: int = 1) -> list:
  return [options[i] for i in rng.choice(len(options), size=count, replace=False)]


def geneval_prompt(category: str, rng: np.random.Generator) -> dict:
  """One prompt of a category: {"category", "prompt", "spec"}."""
  colors = tuple(shapes.COLORS)
  if category == "single_object":
    (shape,) = _pick(rng, shapes.SHAPES)
    text = f"a photo of {shapes.noun_phrase(1, shape)}"
    spec = {"include": [{"shape": shape, "count": 1}], "exclude": []}
  elif category == "two_object":
    a, b = _pick(rng, shapes.SHAPES, 2)
    text = f"a photo of {shapes.noun_phrase(1, a)} and {shapes.noun_phrase(1, b)}"
    spec = {"include": [{"shape": a, "count": 1}, {"shape": b, "count": 1}], "exclude": []}
  elif category == "counting":
    (shape,) = _pick(rng, shapes.SHAPES)
    count = int(rng.integers(2, 5))
    text = f"a photo of {shapes.noun_phrase(count, shape)}"
    spec = {"include": [{"shape": shape, "count": count}],
            "exclude": [{"shape": shape, "count": count + 1}]}
  elif category == "colors":
    (shape,), (color,) = _pick(rng, shapes.SHAPES), _pick(rng, colors)
    text = f"a photo of {shapes.noun_phrase(1, color, shape)}"
    spec = {"include": [{"shape": shape, "count": 1, "color": color}], "exclude": []}
  elif category == "position":
    a, b = _pick(rng, shapes.SHAPES, 2)
    (relation,) = _pick(rng, shapes.RELATIONS)
    text = f"a photo of {shapes.noun_phrase(1, a)} {relation} {shapes.noun_phrase(1, b)}"
    spec = {"include": [{"shape": b, "count": 1},
                        {"shape": a, "count": 1, "position": [relation, 0]}], "exclude": []}
  elif category == "color_attr":
    a, b = _pick(rng, shapes.SHAPES, 2)
    ca, cb = _pick(rng, colors, 2)
    text = (f"a photo of {shapes.noun_phrase(1, ca, a)} and "
            f"{shapes.noun_phrase(1, cb, b)}")
    spec = {"include": [{"shape": a, "count": 1, "color": ca},
                        {"shape": b, "count": 1, "color": cb}], "exclude": []}
  else:
    raise ValueError(f"geneval_prompt: category={category!r}; expected one of "
                     f"{GENEVAL_CATEGORIES}")
  return {"category": category, "prompt": text, "spec": spec}


def geneval_prompts(seed: int, per_category: int) -> list[dict]:
  """per_category prompts of each GenEval category, deterministic from the seed."""
  rng = np.random.default_rng([seed, 2])
  return [geneval_prompt(c, rng) for c in GENEVAL_CATEGORIES for _ in range(per_category)]


def render_for_spec(spec: dict, rng: np.random.Generator, size: int = 64) -> shapes.Scene:
  """A scene that satisfies the spec with room to spare (relations hold with a stricter
  threshold than GenEval's), sometimes with one distractor of a shape the spec does not name."""
  named = {req["shape"] for req in spec.get("include", []) + spec.get("exclude", [])}
  free_shapes = [s for s in shapes.SHAPES if s not in named]
  colors = tuple(shapes.COLORS)
  for attempt in range(200):
    objects: list[shapes.Obj] = []
    groups: list[list[shapes.Obj]] = []
    ok = True
    for req in spec.get("include", []):
      group = []
      for _ in range(req["count"]):
        color = req.get("color") or colors[int(rng.integers(len(colors)))]
        size_name = "small" if attempt > 100 else tuple(shapes.SIZES)[int(rng.integers(2))]
        for _ in range(60):
          obj = shapes.place(rng, req["shape"], color, size_name, objects, size, tries=1)
          if obj is None:
            continue
          if "position" in req:
            relation, target = req["position"]
            if not all(relation in relative_position(obj, t, threshold=0.2, cosine=0.7)
                       for t in groups[target]):
              continue
          break
        else:
          obj = None
        if obj is None:
          ok = False
          break
        objects.append(obj)
        group.append(obj)
      if not ok:
        break
      groups.append(group)
    if not ok:
      continue
    if free_shapes and rng.random() < 0.5:
      shape = free_shapes[int(rng.integers(len(free_shapes)))]
      extra = shapes.place(rng, shape, colors[int(rng.integers(len(colors)))], "small",
                           objects, size)
      if extra is not None:
        objects.append(extra)
    scene = shapes.Scene(tuple(objects), size)
    if satisfied(spec, scene.objects):
      return scene
  raise RuntimeError(f"render_for_spec: could not draw a scene for {spec!r}")


def make_document(seed: int, index: int, size: int = 32) -> Document:
  """Document `index` of the stream `seed`: categories rotate with the index (balanced)."""
  rng = np.random.default_rng([int(seed), 7, int(index)])
  category = GENEVAL_CATEGORIES[index % len(GENEVAL_CATEGORIES)]
  prompt = geneval_prompt(category, rng)
  scene = render_for_spec(prompt["spec"], rng, size)
  meta = {"world": "shapes", "seed": int(seed), "index": int(index), "category": category,
          "spec": prompt["spec"], "scene": shapes.describe(scene)}
  return Document(f"shapes/geneval/{seed}/{index:06d}", "text_to_image",
                  [Segment.of_text(prompt["prompt"]),
                   Segment.of_image(shapes.encode_png(shapes.render(scene)))], meta).validate()
