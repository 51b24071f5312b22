"""GenEval (Ghosh et al., 2023) in its own file formats, scored as its summary scores them.

    python -m unimodal_jax.eval.geneval --metadata=M.jsonl --workdir=W --out=OUT --samples=N
    python -m unimodal_jax.eval.geneval --out=OUT

Prompts: GenEval's `evaluation_metadata.jsonl`, one line per prompt: {"tag", "include": [{"class",
"count", "color"?, "position"?: [relation, index of an earlier include]}], "exclude"?: [{"class",
"count"}], "prompt"}. Images: OUT/<NNNNN>/metadata.jsonl (the prompt's line) and
OUT/<NNNNN>/samples/<NNNN>.png, the layout GenEval's evaluate_images.py reads.

The first form draws --samples images per prompt with the model of an ILLUME or DreamLLM workdir
into OUT, then scores OUT; --out alone re-scores a folder (the stack's or any other model's).
Scores: each image is correct or not by GenEval's rules (data/worlds/geneval.satisfied); a tag's
score is the share of its images that are correct and `overall` the mean over the tags, as
GenEval's summary_scores.py computes them. OUT/results.jsonl gets one line per image.

The detector is pluggable (--judge=module:function, called as judge(metadata line, uint8
[H, W, 3]) -> bool): the default is the shapes world's judge (eval/shapes_judge.py), which knows
the world's shapes and colors; at scale, a wrapper around the detector and color classifier GenEval
uses. Prints, last, one JSON line: each tag's score, `overall`, and the numbers of prompts and
images.
"""
from __future__ import annotations

import collections
import os

import numpy as np

from unimodal_jax.data.worlds import geneval as world_geneval
from unimodal_jax.eval import jsonl
from unimodal_jax.eval.jsonl import FormatError

TAGS = world_geneval.GENEVAL_CATEGORIES  # GenEval's six tags
RELATIONS = ("left of", "right of", "above", "below")


def check_line(line: dict, where: str, classes=None, colors=None) -> None:
  """A metadata line in GenEval's format; `classes` / `colors`, where given, are what the judge
  can tell apart (an unknown one is an error, not a prompt no image could satisfy)."""
  jsonl.require(line, {"tag": str, "include": list, "prompt": str}, where)
  if line["tag"] not in TAGS:
    raise FormatError(f"{where}: unknown tag {line['tag']!r}; GenEval's tags are {list(TAGS)}")
  if not line["include"]:
    raise FormatError(f"{where}: 'include' is empty")
  for key in ("include", "exclude"):
    for i, req in enumerate(line.get(key, [])):
      at = f"{where}, {key}[{i}]"
      if not isinstance(req, dict):
        raise FormatError(f"{at}: expected an object, got {req!r}")
      jsonl.require(req, {"class": str, "count": int}, at)
      if req["count"] < 1:
        raise FormatError(f"{at}: count {req['count']} must be at least 1")
      if classes is not None and req["class"] not in classes:
        raise FormatError(f"{at}: unknown class {req['class']!r}; the judge knows "
                          f"{sorted(classes)}")
      if "color" in req and colors is not None and req["color"] not in colors:
        raise FormatError(f"{at}: unknown color {req['color']!r}; the judge knows "
                          f"{sorted(colors)}")
      if "position" in req:
        pos = req["position"]
        if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS
                and isinstance(pos[1], int) and 0 <= pos[1] < i and key == "include"):
          raise FormatError(f"{at}: position {pos!r}; expected [relation, index of an earlier "
                            f"include], relation one of {list(RELATIONS)}")


def read_metadata(path: str, classes=None, colors=None) -> list[dict]:
  """The prompts of an evaluation_metadata.jsonl, each line checked (check_line)."""
  lines = []
  for n, line in jsonl.read(path):
    check_line(line, f"{path}, line {n}", classes, colors)
    lines.append(line)
  if not lines:
    raise FormatError(f"{path}: no prompts")
  return lines


def to_spec(line: dict) -> dict:
  """A metadata line -> the shapes world's spec (its `class` is the world's `shape`)."""
  def req(r):
    return {("shape" if k == "class" else k): v for k, v in r.items()}
  return {"include": [req(r) for r in line["include"]],
          "exclude": [req(r) for r in line.get("exclude", [])]}


def from_world_prompt(p: dict) -> dict:
  """A shapes-world prompt ({"category", "prompt", "spec"}) -> a GenEval metadata line."""
  def req(r):
    return {("class" if k == "shape" else k): v for k, v in r.items()}
  line = {"tag": p["category"], "include": [req(r) for r in p["spec"]["include"]],
          "prompt": p["prompt"]}
  if p["spec"].get("exclude"):
    line["exclude"] = [req(r) for r in p["spec"]["exclude"]]
  return line


def shapes_judge(line: dict, image: np.ndarray) -> bool:
  """The shapes world's judge on a metadata line."""
  from unimodal_jax.eval import shapes_judge as judge_lib
  return judge_lib.score(to_spec(line), image)


shapes_judge.classes = frozenset(world_geneval.shapes.SHAPES)
shapes_judge.colors = frozenset(world_geneval.shapes.COLORS)


def load_judge(name: str):
  """'module:function' -> the function; '' -> the shapes judge."""
  if not name:
    return shapes_judge
  import importlib
  module, _, attr = name.partition(":")
  if not attr:
    raise FormatError(f"--judge={name!r}: expected module:function")
  return getattr(importlib.import_module(module), attr)


def write_folder(out: str, lines: list[dict], images) -> None:
  """GenEval's layout: OUT/<NNNNN>/metadata.jsonl and OUT/<NNNNN>/samples/<NNNN>.png for
  images[i] (a sequence of uint8 [H, W, 3] per prompt)."""
  from PIL import Image
  for i, (line, ims) in enumerate(zip(lines, images, strict=True)):
    folder = os.path.join(out, f"{i:05d}")
    os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
    jsonl.write(os.path.join(folder, "metadata.jsonl"), [line])
    for j, im in enumerate(ims):
      Image.fromarray(np.asarray(im, np.uint8)).save(os.path.join(folder, "samples",
                                                                  f"{j:04d}.png"))


def read_folder(out: str, classes=None, colors=None) -> list[tuple[dict, list[str]]]:
  """[(metadata line, its sample paths)] of a GenEval output folder, in folder order."""
  if not os.path.isdir(out):
    raise FormatError(f"{out}: no such folder")
  folders = sorted(d for d in os.listdir(out) if d.isdigit()
                   and os.path.isdir(os.path.join(out, d)))
  if not folders:
    raise FormatError(f"{out}: no prompt folders (<NNNNN>/metadata.jsonl)")
  entries = []
  for d in folders:
    meta = os.path.join(out, d, "metadata.jsonl")
    rows = jsonl.read(meta)
    if len(rows) != 1:
      raise FormatError(f"{meta}: expected one metadata line, found {len(rows)}")
    check_line(rows[0][1], meta, classes, colors)
    samples = os.path.join(out, d, "samples")
    names = sorted(f for f in os.listdir(samples) if f.endswith(".png")) if os.path.isdir(
        samples) else []
    if not names:
      raise FormatError(f"{samples}: no samples (<NNNN>.png)")
    entries.append((rows[0][1], [os.path.join(samples, f) for f in names]))
  return entries


def summarize(tags, correct) -> dict:
  """GenEval's summary: per tag the share of correct images, `overall` their mean (tags in
  the order they first appear)."""
  by_tag = collections.defaultdict(list)
  for t, c in zip(tags, correct, strict=True):
    by_tag[t].append(bool(c))
  scores = {t: float(np.mean(v)) for t, v in by_tag.items()}
  scores["overall"] = float(np.mean(list(scores.values()))) if scores else 0.0
  return scores


def score_images(lines: list[dict], images, judge=shapes_judge,
                 filenames=None) -> tuple[dict, list[dict]]:
  """(GenEval's summary, one result per image) of images[i] (a sequence of uint8 [H, W, 3], or
  of paths to read) drawn for metadata line i."""
  from unimodal_jax.data import images as images_lib
  import json
  results = []
  for i, (line, ims) in enumerate(zip(lines, images, strict=True)):
    for j, im in enumerate(ims):
      if isinstance(im, str):
        im = images_lib.read_rgb(im)
      results.append({"filename": filenames[i][j] if filenames else f"{i:05d}/samples/{j:04d}.png",
                      "tag": line["tag"], "prompt": line["prompt"], "correct": bool(judge(line, im)),
                      "metadata": json.dumps(line, sort_keys=True)})
  return summarize([r["tag"] for r in results], [r["correct"] for r in results]), results


def score_folder(out: str, judge=shapes_judge, log=print) -> dict:
  """Score every image of a GenEval folder; OUT/results.jsonl gets one line per image."""
  entries = read_folder(out, getattr(judge, "classes", None), getattr(judge, "colors", None))
  lines, paths = [e[0] for e in entries], [e[1] for e in entries]
  scores, results = score_images(lines, paths, judge, filenames=paths)
  jsonl.write(os.path.join(out, "results.jsonl"), results)
  log(f"geneval: {len(results)} images of {len(entries)} prompts: " + ", ".join(
      f"{k} {v:.3f}" for k, v in scores.items()))
  return {**scores, "prompts": len(entries), "images": len(results)}


def draw_folder(model, lines: list[dict], out: str, samples: int, batch: int = 32,
                log=print) -> None:
  """`samples` images per prompt from a loaded model (unimodal_jax.load), in GenEval's layout."""
  prompts = [line["prompt"] for line in lines for _ in range(samples)]
  drawn = []
  for i in range(0, len(prompts), batch):
    drawn += [np.asarray(im) for im in model.generate_image(prompts[i:i + batch])]
    log(f"geneval: drew {len(drawn)}/{len(prompts)}")
  write_folder(out, lines, [drawn[k * samples:(k + 1) * samples] for k in range(len(lines))])


def main(argv):
  import json
  from unimodal_jax.data.images import ImageError
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    judge = load_judge(_JUDGE.value)
    if _WORKDIR.value or _METADATA.value:
      if not (_WORKDIR.value and _METADATA.value):
        raise SystemExit("error: drawing needs both --metadata and --workdir (--out alone "
                         "re-scores a folder)")
      lines = read_metadata(_METADATA.value, getattr(judge, "classes", None),
                            getattr(judge, "colors", None))
      import unimodal_jax
      draw_folder(unimodal_jax.load(_WORKDIR.value), lines, _OUT.value, _SAMPLES.value)
    scores = score_folder(_OUT.value, judge)
  except (FormatError, ImageError) as e:
    raise SystemExit(f"error: {e}")
  print(json.dumps(scores, sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  _METADATA = flags.DEFINE_string("metadata", "", "GenEval prompts (evaluation_metadata.jsonl) "
                                  "to draw with --workdir")
  _WORKDIR = flags.DEFINE_string("workdir", "", "an ILLUME or DreamLLM workdir (or stage "
                                 "directory) whose model draws the prompts")
  _OUT = flags.DEFINE_string("out", None, "the GenEval output folder: written when drawing, "
                             "then scored")
  _SAMPLES = flags.DEFINE_integer("samples", 4, "images per prompt (GenEval's default: 4)")
  _JUDGE = flags.DEFINE_string("judge", "", "module:function judging (metadata line, image) -> "
                               "bool; default: the shapes world's judge")
  flags.mark_flags_as_required(["out"])
  app.run(main)
