"""The shapes world's held-out tasks in the real benchmarks' file formats, for the harnesses in
unimodal_jax/eval/ (and for any other model's own scripts):

  pope/       {random,popular,adversarial}.jsonl (POPE's question lines) and images/: the
              existence questions the main jobs' evaluation asks (shapes.held_out_questions)
  geneval/    evaluation_metadata.jsonl: the GenEval-style prompts it draws
  mme/        existence/, count/, color/, position/: MME's category folders, each image with a
              <image>.txt of a yes and a no question (`question<TAB>Yes|No`)

    python tools/write_world_benchmarks.py --out=DIR [--seed=1] [--size=32]

The seed is the evaluation's (experiments' data.eval_seed): the scenes and prompts are the held-out
ones, never trained on.
"""
from __future__ import annotations

import copy
import os

import numpy as np

from unimodal_jax.data.worlds import geneval as world_geneval
from unimodal_jax.data.worlds import shapes

MME_CATEGORIES = ("existence", "count", "color", "position")  # MME's, that the world can ask


def write_pope(out: str, seed: int, per_style: int, size: int) -> dict:
  """POPE's files of the evaluation's existence questions: one JSON-lines file per style."""
  from unimodal_jax.eval import jsonl
  docs = [d for d in shapes.held_out_questions(seed, per_style, 0, size)
          if d.metadata["question_type"] == "existence"]
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  by_style = {s: [] for s in shapes.POPE_STYLES}
  for n, d in enumerate(docs):
    name = f"{n:05d}.png"
    with open(os.path.join(out, "images", name), "wb") as f:
      f.write(d.segments[0].image)
    by_style[d.metadata["pope_style"]].append(
        {"question_id": n, "image": name, "text": d.segments[1].text,
         "label": d.metadata["answer"]})
  for style, lines in by_style.items():
    jsonl.write(os.path.join(out, f"{style}.jsonl"), lines)
  return {s: len(v) for s, v in by_style.items()}


def write_geneval(out: str, seed: int, per_category: int) -> int:
  """GenEval's evaluation_metadata.jsonl of the evaluation's prompts."""
  from unimodal_jax.eval import geneval, jsonl
  lines = [geneval.from_world_prompt(p) for p in world_geneval.geneval_prompts(seed, per_category)]
  jsonl.write(os.path.join(out, "evaluation_metadata.jsonl"), lines)
  return len(lines)


def _count_question(shape: str, n: int) -> str:
  noun = shape if n == 1 else shapes.PLURALS[shape]
  return f"{'Is' if n == 1 else 'Are'} there {shapes.NUMBER_WORDS[n]} {noun} in the image?"


def mme_pair(scene: shapes.Scene, rng: np.random.Generator,
             category: str) -> tuple[str, str] | None:
  """(a question whose answer is yes, one whose answer is no) about one scene, as MME asks each
  image; None when the scene does not allow the category."""
  if category == "existence":
    yes, no = (shapes.existence_question(scene, rng, "adversarial", p) for p in (True, False))
    return yes["question"], no["question"]
  if category == "count":
    shape = scene.objects[int(rng.integers(len(scene.objects)))].shape
    n = sum(o.shape == shape for o in scene.objects)
    wrong = n + 1 if n == 1 or rng.random() < 0.5 else n - 1
    return _count_question(shape, n), _count_question(shape, wrong)
  if category == "color":  # about an object its shape alone names
    single = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if not single:
      return None
    obj = single[int(rng.integers(len(single)))]
    others = [c for c in shapes.COLORS if c != obj.color]
    return (f"Is the {obj.shape} {obj.color}?",
            f"Is the {obj.shape} {others[int(rng.integers(len(others)))]}?")
  if category == "position":  # the same objects asked both ways
    twin = copy.deepcopy(rng)
    yes = shapes.position_question(scene, rng, ask_yes=True)
    no = shapes.position_question(scene, twin, ask_yes=False)
    return None if yes is None else (yes["question"], no["question"])
  raise ValueError(f"mme_pair: category={category!r}; expected one of {MME_CATEGORIES}")


def write_mme(out: str, seed: int, per_category: int, size: int) -> dict:
  """MME's category folders: per_category held-out scenes each, with their two questions."""
  counts = {}
  for c, category in enumerate(MME_CATEGORIES):
    folder = os.path.join(out, category)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng([seed, 11, c])
    n = 0
    while n < per_category:
      scene = shapes.sample_scene(rng, size)
      pair = mme_pair(scene, rng, category)
      if pair is None:
        continue
      with open(os.path.join(folder, f"{n:05d}.png"), "wb") as f:
        f.write(shapes.encode_png(shapes.render(scene)))
      with open(os.path.join(folder, f"{n:05d}.txt"), "w", encoding="utf-8") as f:
        f.write(f"{pair[0]}\tYes\n{pair[1]}\tNo\n")
      n += 1
    counts[category] = n
  return counts


def write_all(out: str, seed: int, size: int, pope_per_style: int, geneval_per_category: int,
              mme_per_category: int) -> dict:
  return {"pope": write_pope(os.path.join(out, "pope"), seed, pope_per_style, size),
          "geneval": write_geneval(os.path.join(out, "geneval"), seed, geneval_per_category),
          "mme": write_mme(os.path.join(out, "mme"), seed, mme_per_category, size)}
