"""Text-to-image documents in the shapes world from GenEval-style prompts ("a photo of two red
circles", "a photo of a square left of a cross"): the prompt, then a scene drawn to satisfy it
(eval/shapes_judge.py render_for_spec). Training on one seed and evaluating generation on another
keeps the GenEval-style scores held out: the prompts' wording is shared, the scenes are not.
"""
from __future__ import annotations

import numpy as np

from unimodal_jax.data.documents import Document, Segment
from unimodal_jax.data.worlds import shapes


def make_document(seed: int, index: int, size: int = 32) -> Document:
  """Document `index` of the stream `seed`: categories rotate with the index (balanced)."""
  from unimodal_jax.eval import shapes_judge
  rng = np.random.default_rng([int(seed), 7, int(index)])
  category = shapes_judge.GENEVAL_CATEGORIES[index % len(shapes_judge.GENEVAL_CATEGORIES)]
  prompt = shapes_judge.geneval_prompt(category, rng)
  scene = shapes_judge.render_for_spec(prompt["spec"], rng, size)
  meta = {"world": "shapes", "seed": int(seed), "index": int(index), "category": category,
          "spec": prompt["spec"], "scene": shapes.describe(scene)}
  return Document(f"shapes/geneval/{seed}/{index:06d}", "text_to_image",
                  [Segment.of_text(prompt["prompt"]),
                   Segment.of_image(shapes.encode_png(shapes.render(scene)))], meta).validate()
