"""ILLUME's self-enhancing alignment in the shapes world: the stage-2 model draws images for
GenEval-style prompts kept apart from evaluation, each image is assessed against its prompt on
object, count, color and spatial position, and the assessments become stage-3 dialogues.

    assessment  {"object": "yes", "count": "no"}: a JSON object with the aspects the prompt asks
                about (object always; count, color, position when the prompt names them), each
                "yes" or "no". Every aspect is "yes" exactly when GenEval's rules pass the image
                (geneval.satisfied): a failing include is charged to the first aspect it fails,
                in the order object, count, color, position.
    one turn    a good image:  USER: <image> Is this image <prompt>?  ASSISTANT: <assessment>
    two turns   a poor image:  ... then  USER: draw <prompt>  ASSISTANT: <codes of a right scene>
                (the assessment, then the correction)

The assessor is pluggable: anything that maps (spec, image) to an assessment. In the miniature it
is the shapes judge (`judge_assessor`), standing in for the paper's reference assessor; at scale
a scorer's JSON can be read with `parse_assessment`; and the model itself assesses through the
same dialogue (`model_assessments`), which is how the evaluation measures agreement.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import sampling
from unimodal_jax.data import shards
from unimodal_jax.data.documents import Document, Segment
from unimodal_jax.data.worlds import geneval, shapes

ASPECTS = ("object", "count", "color", "position")
VERDICTS = ("yes", "no")
TASK = "self_assessment"  # the source name of the dialogues (a shard directory)


def question(prompt: str) -> str:
  return f"Is this image {prompt}?"


def correction_request(prompt: str) -> str:
  return f"draw {prompt}"


def aspects_asked(spec: dict) -> tuple[str, ...]:
  """The aspects a prompt's spec asks about, in ASPECTS order."""
  include, exclude = spec.get("include", []), spec.get("exclude", [])
  asked = {"object"}
  if any(r["count"] > 1 for r in include) or exclude:
    asked.add("count")
  if any("color" in r for r in include):
    asked.add("color")
  if any("position" in r for r in include):
    asked.add("position")
  return tuple(a for a in ASPECTS if a in asked)


def assess(spec: dict, objects: Sequence) -> dict[str, str]:
  """The assessment of a set of objects (judge detections or scene objects) against a spec."""
  verdict = {a: "yes" for a in aspects_asked(spec)}
  groups: list[list | None] = []
  for req in spec.get("include", []):
    of_shape = [o for o in objects if o.shape == req["shape"]]
    found = sorted([o for o in of_shape if "color" not in req or o.color == req["color"]],
                   key=lambda o: (-o.extent, o.x, o.y))[:req["count"]]  # as geneval.satisfied
    failed = None
    if not of_shape:
      failed = "object"
    elif len(of_shape) < req["count"]:
      failed = "count"
    elif len(found) < req["count"]:
      failed = "color"
    elif "position" in req:
      relation, target = req["position"]
      group = groups[target] if target < len(groups) else None
      if group is None or not all(relation in geneval.relative_position(o, t)
                                  for o in found for t in group):
        failed = "position"
    groups.append(None if failed else found)
    if failed:
      verdict[failed] = "no"
  for req in spec.get("exclude", []):
    if sum(o.shape == req["shape"] for o in objects) >= req["count"]:
      verdict["count"] = "no"
  return verdict


def matches(assessment: dict[str, str]) -> bool:
  """The overall verdict: every aspect asked is "yes"."""
  return all(v == "yes" for v in assessment.values())


def to_json(assessment: dict[str, str]) -> str:
  """The assessment as the model writes it: its aspects in ASPECTS order."""
  return json.dumps({a: assessment[a] for a in ASPECTS if a in assessment})


def parse_assessment(text: str, spec: dict) -> dict[str, str] | None:
  """An assessment written by a model or another scorer, checked against the schema (the first
  {...} in the text; exactly the aspects the spec asks, each "yes" or "no"); None if it is not
  one."""
  start, end = text.find("{"), text.find("}")
  if start < 0 or end < start:
    return None
  try:
    d = json.loads(text[start:end + 1])
  except json.JSONDecodeError:
    return None
  if (not isinstance(d, dict) or set(d) != set(aspects_asked(spec))
      or any(v not in VERDICTS for v in d.values())):
    return None
  return {a: d[a] for a in ASPECTS if a in d}


def judge_assessor(spec: dict, image: np.ndarray) -> dict[str, str]:
  """The miniature's reference assessor: the shapes judge's detections, assessed."""
  from unimodal_jax.eval import shapes_judge
  return assess(spec, shapes_judge.detect(image))


def dialogue(doc_id: str, prompt: dict, image_png: bytes, assessment: dict[str, str],
             correction: Segment | None = None) -> Document:
  """A one-turn dialogue for an image that matches its prompt, a two-turn one (the assessment,
  then `correction`: the image the model should have drawn, as written codes or pixels) for one
  that does not."""
  poor = not matches(assessment)
  if poor and correction is None:
    raise ValueError(f"{doc_id}: a poor image's dialogue needs a correction image")
  if not poor and correction is not None:
    raise ValueError(f"{doc_id}: an image that matches its prompt takes no correction")
  segments = [Segment.of_image(image_png, "user"), Segment.of_text(question(prompt["prompt"]),
                                                                   "user"),
              Segment.of_text(to_json(assessment), "assistant")]
  if poor:
    segments += [Segment.of_text(correction_request(prompt["prompt"]), "user"),
                 Segment(correction.type, image=correction.image, tokens=correction.tokens,
                         role="assistant")]
  meta = {"world": "shapes", "category": prompt["category"], "prompt": prompt["prompt"],
          "spec": prompt["spec"], "assessment": assessment, "turns": 2 if poor else 1}
  return Document(doc_id, "conversation", segments, meta).validate()


def write_data(directory: str, prompts: list[dict], images: np.ndarray, *, seed: int,
               assessor: Callable[[dict, np.ndarray], dict] = judge_assessor,
               assessments: list[dict] | None = None,
               tokenize: Callable[[np.ndarray], np.ndarray] | None = None,
               balance: bool = False, log=print) -> dict:
  """Assess each drawn image against its prompt (or take `assessments` made elsewhere) and write
  the dialogues as one shard directory (complete or not at all: written under a temporary name,
  then renamed). Corrections are scenes drawn to satisfy the prompt (seeded by `seed`), written
  as codes when `tokenize` is given. `balance`: as many right drawings as wrong ones are kept
  (the larger side subsampled; all of them when every drawing is right or every one wrong), so
  the assessments carry no prior for the model to learn instead of looking (as the existence
  questions of the dialogue task are balanced). Returns the counts and the drawings' score per
  aspect (over all drawings)."""
  if len(prompts) != len(images):
    raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
  start = time.time()
  size = images.shape[1]
  if assessments is None:
    assessments = [assessor(p["spec"], im) for p, im in zip(prompts, images)]
  elif len(assessments) != len(prompts):
    raise ValueError(f"{len(assessments)} assessments for {len(prompts)} images")
  rng = np.random.default_rng([seed, 11])
  kept = list(range(len(prompts)))
  sides = [[i for i in kept if matches(assessments[i])],
           [i for i in kept if not matches(assessments[i])]]
  balanced = balance and min(map(len, sides)) > 0
  if balance and not balanced:  # all right or all wrong: nothing to balance against
    log(f"self-assessment: all {len(kept)} drawings are {'right' if sides[0] else 'wrong'}; "
        f"kept unbalanced")
  if balanced:
    n_side = min(map(len, sides))
    kept = sorted(i for side in sides for i in rng.permutation(side)[:n_side].tolist())
  poor = [i for i in kept if not matches(assessments[i])]
  right = {i: shapes.render(geneval.render_for_spec(prompts[i]["spec"], rng, size=size))
           for i in poor}
  codes = dict(zip(poor, tokenize(np.stack([right[i] for i in poor])))) if (
      tokenize is not None and poor) else {}
  docs = []
  for i in kept:
    p, im, a = prompts[i], images[i], assessments[i]
    correction = None
    if i in right:
      correction = (Segment.of_image_tokens(codes[i]) if i in codes
                    else Segment.of_image(shapes.encode_png(right[i])))
    docs.append(dialogue(f"shapes/{TASK}/{seed}/{i:06d}", p, shapes.encode_png(im), a,
                         correction))
  tmp = directory + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  path = shards.shard_path(tmp, TASK, 0, 1)
  n = shards.write_shard(path, docs)
  shards.write_info(tmp, TASK, [(path, n)], [], created_by="unimodal_jax.alignment")
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)
  per_aspect = collections.defaultdict(list)
  for a in assessments:
    for k, v in a.items():
      per_aspect[k].append(v == "yes")
  figures = {"documents": n, "one_turn": n - len(poor), "two_turn": len(poor),
             "drawings": len(prompts), "balanced": bool(balanced),
             "match_rate": float(np.mean([matches(a) for a in assessments])),
             "aspect_yes_rate": {k: float(np.mean(v)) for k, v in per_aspect.items()}}
  log(f"self-assessment: {n} dialogues ({n - len(poor)} one-turn, {len(poor)} two-turn) in "
      f"{time.time() - start:.1f}s -> {directory}")
  return figures


def model_assessments(model, params, formatter, sp, prompts: list[dict], images: np.ndarray,
                      batch: int = 32, max_new_tokens: int = 48) -> list[str]:
  """The model's own assessments (greedy text) of images against their prompts, asked exactly
  as the dialogues ask."""
  from unimodal_jax.pipeline import evaluate
  cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                stop_tokens=(formatter.vocab.eos_id,),
                                pad_id=formatter.vocab.eos_id)
  texts = []
  for start in range(0, len(prompts), batch):
    idx = range(start, min(start + batch, len(prompts)))
    # The assistant's text only marks where the answer starts; prompt_of cuts it away.
    docs = [Document(f"eval/{TASK}/{j}", "conversation",
                     [Segment.of_image(shapes.encode_png(images[j]), "user"),
                      Segment.of_text(question(prompts[j]["prompt"]), "user"),
                      Segment.of_text("{", "assistant")]) for j in idx]
    cut = [evaluate.prompt_of(formatter, d) for d in docs]
    tokens, mask = sampling.left_pad([c[0] for c in cut])
    pixels = jnp.asarray(np.stack([c[1] for c in cut]))
    out = np.asarray(sampling.generate_text(model, params, jnp.asarray(tokens),
                                            jnp.asarray(mask), jax.random.key(0), cfg,
                                            images=pixels))
    texts += [evaluate.decode_answer(row, sp, formatter) for row in out]
  return texts


def agreement(prompts: list[dict], texts: list[str], references: list[dict]) -> dict:
  """How the model's written assessments agree with reference ones (the judge's): the overall
  verdict (an unreadable assessment counts as a disagreement); the same balanced, the mean of the
  agreement on right and on wrong drawings where both occur (0.5 for any constant verdict,
  whereas always saying "wrong" agrees on the share of wrong drawings); each aspect; and the
  share the schema could read."""
  # (by_truth: the agreement on the judge's right drawings and on its wrong ones)
  parsed = [parse_assessment(t, p["spec"]) for p, t in zip(prompts, texts)]
  overall = [a is not None and matches(a) == matches(r) for a, r in zip(parsed, references)]
  by_truth = {v: [o for o, r in zip(overall, references) if matches(r) == v]
              for v in (True, False)}
  per_aspect = collections.defaultdict(list)
  for a, r in zip(parsed, references):
    for k, v in r.items():
      per_aspect[k].append(a is not None and a.get(k) == v)
  n = max(1, len(texts))
  return {"agreement": float(np.mean(overall)) if overall else 0.0,
          "balanced_agreement": float(np.mean([np.mean(v) for v in by_truth.values() if v]))
                                if overall else 0.0,
          "per_aspect": {k: float(np.mean(v)) for k, v in per_aspect.items()},
          "parsed": sum(a is not None for a in parsed) / n,
          "judge_match_rate": sum(matches(r) for r in references) / n,
          "images": len(texts),
          "examples": [{"prompt": p["prompt"], "model": t, "judge": to_json(r)}
                       for p, t, r in list(zip(prompts, texts, references))[:8]]}


def choose_by_self_assessment(prompts: list[dict], draws: list[np.ndarray],
                              texts: list[list[str]]) -> tuple[np.ndarray, list[int]]:
  """Per prompt, the first of its draws (draws[n][i], assessed by the model as texts[n][i]) that
  the model's assessment calls right, or the first draw if it calls none right: (the chosen
  images, the index of the draw chosen for each prompt)."""
  right = [[(lambda a: a is not None and matches(a))(parse_assessment(t, p["spec"]))
            for p, t in zip(prompts, draw_texts)] for draw_texts in texts]
  picks = [next((n for n in range(len(draws)) if right[n][i]), 0) for i in range(len(prompts))]
  return np.stack([draws[n][i] for i, n in enumerate(picks)]), picks


__all__ = ["ASPECTS", "TASK", "aspects_asked", "assess", "matches", "to_json", "parse_assessment",
           "judge_assessor", "dialogue", "write_data", "model_assessments", "agreement",
           "choose_by_self_assessment"]
