"""Interleaved consistency on the shapes world: does each image a model placed in a document show
what the sentence before it says? (DreamLLM's claim is free-form interleaved documents; the shapes
world's judge makes the check exact.)

A generated document starts from a held-out story's first sentence ("This picture shows ...",
data/worlds/shapes.story_opening) and goes on as the model chooses. Each image it placed is
judged against the text segment just before it:
  - the prompt itself: the story's scene;
  - text the model wrote: read as an instruction of the world (shapes.read_instruction: "Now,
    make the red circle blue.") and applied to the scene before it (the judge's detections in
    the previous image; for a first image, the prompt's scene);
and the image is consistent when the judge finds exactly the expected objects, by shape and
colour with their counts (sizes and positions are not compared: the story's first sentence
names neither). Text that is not one such sentence, or an instruction naming no single object
of the scene before it, makes its image inconsistent (counted as "unreadable").
"""
from __future__ import annotations

import collections

from unimodal_jax.data.worlds import shapes
from unimodal_jax.eval import shapes_judge


def _kinds(objects) -> collections.Counter:
  return collections.Counter((o.shape, o.color) for o in objects)


def judge_document(segments, scene: shapes.Scene, detect=shapes_judge.detect) -> list[dict]:
  """One verdict per image of a generated document (segments as generate_document returns them,
  the prompt first) whose prompt describes `scene`: {"consistent", "reason", "follows"}.
  `detect`: uint8 image -> objects with shape and colour (the judge)."""
  verdicts, before, text = [], list(scene.objects), None
  for i, seg in enumerate(segments):
    if seg.type == "text":
      text = seg.text if i else None  # None: the image follows the prompt itself
      continue
    found = detect(shapes.decode_image(seg.image))
    if text is None:
      expected, reason = list(scene.objects), "prompt"
    else:
      instruction = shapes.read_instruction(text)
      expected = None if instruction is None else shapes.apply_instruction(before, instruction)
      reason = ("unreadable" if instruction is None else
                "names no single object" if expected is None else instruction["kind"])
    consistent = expected is not None and _kinds(found) == _kinds(expected)
    verdicts.append({"consistent": bool(consistent), "reason": reason,
                     "follows": segments[0].text if text is None else text})
    before, text = list(found), ""  # text after an image starts afresh
  return verdicts


def summarize(verdicts: list[list[dict]], reference_images: float) -> dict:
  """The share of placed images consistent with their sentence, and how many images the
  documents placed against the reference stories' `reference_images` per document."""
  flat = [v for doc in verdicts for v in doc]
  reasons = collections.Counter(v["reason"] for v in flat)
  by_reason = {r: sum(v["consistent"] for v in flat if v["reason"] == r) / n
               for r, n in sorted(reasons.items())}
  return {
      "consistency": sum(v["consistent"] for v in flat) / len(flat) if flat else 0.0,
      "images": len(flat),
      "documents": len(verdicts),
      "images_per_document": len(flat) / max(1, len(verdicts)),
      "reference_images_per_document": float(reference_images),
      "documents_without_images": sum(not doc for doc in verdicts),
      "following": dict(sorted(reasons.items())),
      "consistency_following": by_reason,
  }


__all__ = ["judge_document", "summarize"]
