"""Held-out evaluation of an ILLUME model on the shapes world, scored exactly from the scenes:

  understanding  POPE-style existence questions (random / popular / adversarial negatives),
                 counting, color and position questions: greedy answers, exact match; and for
                 the existence questions the ranking AUC of the "yes" minus "no" logit, which
                 tells a model that reads the image but answers with a bias (AUC well above
                 0.5) from one that does not read it (about 0.5)
  generation     GenEval-style prompts -> a drawer -> the judge's verdict per category
                 (shapes_judge.score). ILLUME's CodeDrawer: image codes (CFG, the prompt masked)
                 -> pixel decoder; DreamLLM's DreamDrawer: the dream queries' states -> U-Net
  ceiling        the same prompts, scenes drawn to satisfy them -> tokenize -> pixel decoder ->
                 the judge: what a model that always wrote a right scene's codes would score,
                 i.e. how much of the generation score the tokenizer leaves reachable
  editing        image + instruction -> codes (CFG, the instruction masked) -> pixels -> does the
                 judge find exactly the edited scene's objects?

Prompts are built by the same Formatter as training, cut before the first target token, so the
evaluation reads exactly the layout the model was trained on.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import sampling, sharding
from unimodal_jax.data.documents import Document, Segment
from unimodal_jax.data.worlds import geneval, shapes
from unimodal_jax.eval import geneval as benchmark_geneval
from unimodal_jax.eval import jsonl, pope, shapes_judge


def prompt_of(formatter, doc: Document):
  """(prompt token ids up to and excluding the first target, the images it reads)."""
  ex = formatter(doc)
  first = int(np.argmax(ex["target_mask"] > 0))
  return list(ex["inputs"][:first + 1]), ex["images"]


def _batches(n: int, size: int):
  return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _stack_images(images_list, size):
  m = max(1, max(len(x) for x in images_list))
  out = np.zeros((len(images_list), m, size, size, 3), np.uint8)
  for i, x in enumerate(images_list):
    out[i, :len(x)] = x
  return out


# ----------------------------------------------------------------------------- understanding

def decode_answer(row, sp, formatter) -> str:
  """The text of one generated row: up to its end-of-sequence, the text pieces only."""
  ids = [int(t) for t in row]
  eos = formatter.vocab.eos_id
  ids = ids[:ids.index(eos)] if eos in ids else ids
  return sp.decode([t for t in ids if t < formatter.vocab.text_size])


def answer_prompt(formatter, image: bytes, question: str):
  """(prompt tokens, images) of a question about an encoded image, cut where the answer
  starts."""
  # The assistant's text only marks where the answer starts; prompt_of cuts it away.
  return prompt_of(formatter, Document("eval/answer", "conversation", [
      Segment.of_image(image, "user"), Segment.of_text(question, "user"),
      Segment.of_text("yes", "assistant")]))


def padded(cut, size: int):
  """One batch of cut prompts ((tokens, images) pairs) as arrays: tokens and mask left-padded
  [B, T], images [B, M, size, size, 3]."""
  tokens, mask = sampling.left_pad([c[0] for c in cut])
  return (jnp.asarray(tokens), jnp.asarray(mask),
          jnp.asarray(_stack_images([c[1] for c in cut], size)))


def answer_texts(model, params, formatter, sp, batch, max_new_tokens: int) -> list[str]:
  """Greedy answers to one `padded` batch of prompts, as text."""
  cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                stop_tokens=(formatter.vocab.eos_id,),
                                pad_id=formatter.vocab.eos_id)
  tokens, mask, images = batch
  out = np.asarray(sampling.generate_text(model, params, tokens, mask, jax.random.key(0), cfg,
                                          images=images))
  return [decode_answer(row, sp, formatter) for row in out]


def understanding(model, params, formatter, sp, seed: int, per_style: int, per_kind: int,
                  batch: int = 32, log=print, pope_dir: str | None = None) -> dict:
  """Accuracy per question kind on held-out scenes: the existence questions are POPE's, scored
  by its official rule (eval/pope.py) per negative-sampling style, with its precision, recall,
  F1 and yes-ratio under "pope"; with `pope_dir`, written there as POPE's files. The others
  (counting, color, position) by exact match."""
  docs = shapes.held_out_questions(seed, per_style, per_kind, formatter.config.image_size)
  size = formatter.config.image_size
  yes_no = [sp.encode(w)[0] for w in ("yes", "no")]
  hits = collections.defaultdict(list)
  answers = []
  margins, truths = [], []
  raw = {}  # existence questions' answers as generated, for POPE's rule
  for idx in _batches(len(docs), batch):
    arrays = padded([prompt_of(formatter, docs[j]) for j in idx], size)
    texts = answer_texts(model, params, formatter, sp, arrays, max_new_tokens=6)
    first = np.asarray(first_logits(model, params, *arrays))
    for j, logits in zip(idx, first):
      if docs[j].metadata["question_type"] == "existence":
        margins.append(float(logits[yes_no[0]] - logits[yes_no[1]]))
        truths.append(docs[j].metadata["answer"] == "yes")
    for j, text in zip(idx, texts):
      meta = docs[j].metadata
      if meta["question_type"] == "existence":
        raw[j] = text.strip()
      else:  # open answers (a count, a color) and position's yes/no: exact match
        hits[meta["question_type"]].append(text.strip().lower() == meta["answer"])
      answers.append({"question": docs[j].segments[1].text, "answer": meta["answer"],
                      "model": text.strip().lower()})
  result = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
  counts = {k: len(v) for k, v in sorted(hits.items())}
  # The existence questions are POPE's: scored by its official rule (eval/pope.py), per
  # negative-sampling style and overall.
  questions = [{"question_id": j, "image": f"{j:05d}.png", "text": docs[j].segments[1].text,
                "label": docs[j].metadata["answer"], "style": docs[j].metadata["pope_style"]}
               for j in sorted(raw)]
  for style in shapes.POPE_STYLES:
    subset = [q for q in questions if q["style"] == style]
    if subset:
      result[f"pope_{style}"] = pope.score(subset, raw)["accuracy"]
      counts[f"pope_{style}"] = len(subset)
  if questions:
    result["pope"] = pope.score(questions, raw)
    result["pope_overall"] = result["pope"]["accuracy"]
    if pope_dir:  # the official files, re-scored by python -m unimodal_jax.eval.pope
      jsonl.write(os.path.join(pope_dir, "questions.jsonl"),
                  [{k: v for k, v in q.items() if k != "style"} for q in questions])
      pope.write_answers(os.path.join(pope_dir, "answers.jsonl"), questions,
                         [raw[q["question_id"]] for q in questions])
      os.makedirs(os.path.join(pope_dir, "images"), exist_ok=True)
      for q in questions:
        with open(os.path.join(pope_dir, "images", q["image"]), "wb") as f:
          f.write(docs[q["question_id"]].segments[0].image)
  else:
    result["pope_overall"] = 0.0
  result["pope_auc"] = ranking_auc(margins, truths)
  result["count"] = counts
  result["examples"] = answers[:12]
  log("eval: understanding " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()
                                         if isinstance(v, float)))
  return result


@functools.partial(jax.jit, static_argnames=("model",))
def first_logits(model, params, tokens, mask, images):
  """The logits of each prompt's first answer token [B, V] (one pass over the prompt)."""
  return sampling.prefill(model, params, tokens, mask, tokens.shape[1] + 1, images=images)[0]


def ranking_auc(scores, positives) -> float:
  """P(a positive's score > a negative's), ties counting half (the ROC curve's area); 0.5 when
  either class is empty."""
  s, y = np.asarray(scores, np.float64), np.asarray(positives, bool)
  pos, neg = s[y], s[~y]
  if not len(pos) or not len(neg):
    return 0.5
  greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
  return float(greater / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- generation

@dataclasses.dataclass(frozen=True)
class ImageSampling:
  guidance: float = 2.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  pixel_steps: int = 32
  pixel_guidance: float = 2.0


def _guided_batch(conds, unconds, idx, start_id: int, size: int):
  """One batch of conditional and unconditional prompts, each ending in `start_id`, left-padded
  to one length: (tokens, mask, uncond tokens, uncond mask, the images they read or None)."""
  cp = [conds[j][0] + [start_id] for j in idx]
  up = [unconds[j][0] + [start_id] for j in idx]
  length = max(len(x) for x in cp + up)
  tokens, mask = sampling.left_pad(cp, length=length)
  utokens, umask = sampling.left_pad(up, length=length)
  ims = [conds[j][1] for j in idx]
  images = _stack_images(ims, size) if any(len(x) for x in ims) else None
  return tokens, mask, utokens, umask, images


class CodeDrawer:
  """ILLUME draws: image codes sampled after <image_start> with classifier-free guidance (the
  prompt masked), then the pixel decoder (codec.detokenize).

  With a `mesh` both run data-parallel, as a pod draws: the LLM's params are laid out as
  training lays them out, the decoders replicated, and each batch's rows are split over the batch
  axes (data x fsdp; a short batch padded with copies of its last row)."""

  def __init__(self, model, params, formatter, codec, s: ImageSampling, batch: int = 32,
               mesh=None):
    self.model, self.formatter = model, formatter
    self.codec, self.s, self.batch, self.mesh = codec, s, batch, mesh
    self.params = params if mesh is None else sharding.place_params(model, model.config,
                                                                    params, mesh)

  def placeholder(self, role: str = "") -> Segment:
    """The segment an image to draw takes in a prompt document (cut off before it)."""
    return Segment.of_image_tokens([0] * self.codec.tokens_per_image, role=role)

  def _rows(self, array):
    """A batch's array as sampling reads it: on the mesh (padded), or as it is."""
    if array is None or self.mesh is None:
      return None if array is None else jnp.asarray(array)
    return sharding.shard_rows(sharding.pad_rows(array, self.mesh), self.mesh)

  def codes(self, conds, unconds, seed: int) -> np.ndarray:
    """Image codes [N, tokens_per_image] for prompts (token lists ending before the image, with
    their images)."""
    v, s = self.formatter.vocab, self.s
    size = self.formatter.config.image_size
    rng = jax.random.key(seed)
    out = []
    for n, idx in enumerate(_batches(len(conds), self.batch)):
      tokens, mask, utokens, umask, images = map(self._rows, _guided_batch(
          conds, unconds, idx, v.image_start, size))
      with (contextlib.nullcontext() if self.mesh is None
            else sharding.activation_sharding(self.mesh)):
        codes = sampling.generate_image(
            self.model, self.params, tokens, mask, jax.random.fold_in(rng, n),
            tokens_per_image=self.codec.tokens_per_image, image_offset=v.image_offset,
            image_codes=v.image_codes, guidance=s.guidance, uncond_mask=umask,
            uncond_prompt=utokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            images=images)
      out.append(sharding.gather_rows(codes)[:len(idx)])
    return np.concatenate(out)

  def drawn(self, conds, unconds, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, their codes) for prompts (token lists ending before the image, with their
    images)."""
    s = self.s
    codes = self.codes(conds, unconds, seed)
    return self.codec.detokenize(codes, jax.random.key(seed + 1), steps=s.pixel_steps,
                                 guidance=s.pixel_guidance, mesh=self.mesh), codes

  def __call__(self, conds, unconds, seed: int) -> np.ndarray:
    """uint8 images for prompts (token lists ending before the image, with their images)."""
    return self.drawn(conds, unconds, seed)[0]


class DreamDrawer:
  """DreamLLM draws: <dream_start> appended, the dream queries' states (prompt and, for the
  unconditional branch, the empty prompt) condition the U-Net sampler with classifier-free
  guidance (sampling.generate_dream_image)."""

  def __init__(self, model, params, formatter, *, steps: int, guidance: float, batch: int = 32):
    self.model, self.params, self.formatter = model, params, formatter
    self.steps, self.guidance, self.batch = steps, guidance, batch
    from unimodal_jax.data.worlds import shapes
    # Any decodable image of the drawn size: the prompt is cut before it (prompt_of).
    self._blank = shapes.encode_png(np.zeros((formatter.config.image_size,) * 2 + (3,), np.uint8))

  def placeholder(self, role: str = "") -> Segment:
    return Segment.of_image(self._blank, role=role)

  def drawn(self, conds, unconds, seed: int) -> tuple[np.ndarray, None]:
    """(uint8 images, None): DreamLLM draws pixels, no codes."""
    return self(conds, unconds, seed), None

  def __call__(self, conds, unconds, seed: int) -> np.ndarray:
    v = self.formatter.vocab
    size = self.formatter.config.image_size
    rng = jax.random.key(seed)
    out = []
    for n, idx in enumerate(_batches(len(conds), self.batch)):
      tokens, mask, utokens, umask, images = _guided_batch(conds, unconds, idx, v.dream_start,
                                                           size)
      out.append(np.asarray(sampling.generate_dream_image(
          self.model, self.params, jnp.asarray(tokens), jnp.asarray(mask),
          jax.random.fold_in(rng, n), guidance=self.guidance, uncond_mask=jnp.asarray(umask),
          uncond_prompt=jnp.asarray(utokens), num_steps=self.steps, images=images)))
    return np.concatenate(out)


def geneval_scores(prompts, images, out_dir: str | None = None) -> dict:
  """GenEval's summary (each category's share of right images, "overall" their mean) of one
  image per world prompt, judged through the GenEval harness (eval/geneval.py). With `out_dir`,
  also GenEval's folder layout and its results.jsonl, which `python -m unimodal_jax.eval.geneval
  --out=out_dir` re-scores to the same figures."""
  lines = [benchmark_geneval.from_world_prompt(p) for p in prompts]
  scores, results = benchmark_geneval.score_images(lines, [[im] for im in images])
  if out_dir:
    benchmark_geneval.write_folder(out_dir, lines, [[im] for im in images])
    jsonl.write(os.path.join(out_dir, "results.jsonl"), results)
  return scores


def draw_prompts(draw, formatter, texts: list[str], seed: int) -> np.ndarray:
  """uint8 images `draw` (a CodeDrawer or a DreamDrawer) makes of text-to-image prompts."""
  conds, unconds = [], []
  for i, text in enumerate(texts):
    for t, out in ((text, conds), ("", unconds)):
      doc = Document(f"eval/geneval/{i}", "text_to_image",
                     [Segment.of_text(t), draw.placeholder()])
      out.append(prompt_of(formatter, doc))
  return draw(conds, unconds, seed)


def generation(draw, formatter, seed: int, per_category: int, log=print,
               out_dir: str | None = None) -> tuple[dict, list, np.ndarray]:
  """GenEval-style scores per category and overall of what `draw` (a CodeDrawer or a
  DreamDrawer) makes of held-out prompts; also (prompts, images) for the grid. With `out_dir`
  the drawings are kept there in GenEval's layout (geneval_scores)."""
  prompts = geneval.geneval_prompts(seed, per_category)
  images = draw_prompts(draw, formatter, [p["prompt"] for p in prompts], seed)
  result = geneval_scores(prompts, images, out_dir)
  result["prompts"] = len(prompts)
  log("eval: generation " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()
                                      if isinstance(v, float)))
  return result, prompts, images


def generation_ceiling(codec, seed: int, per_category: int, s: ImageSampling,
                       log=print) -> tuple[dict, np.ndarray, np.ndarray]:
  """GenEval-style scores of detokenize(tokenize(scene)) for scenes that satisfy the prompts
  `generation` asks (the same prompts and pixel sampling): the tokenizer's ceiling. Returns
  (scores, the rendered scenes, their decoded reconstructions)."""
  prompts = geneval.geneval_prompts(seed, per_category)
  rng = np.random.default_rng([seed, 3])
  scenes = [geneval.render_for_spec(p["spec"], rng, size=codec.image_size) for p in prompts]
  rendered = np.stack([shapes.render(sc) for sc in scenes])
  images = codec.detokenize(codec.tokenize(rendered), jax.random.key(seed + 1),
                            steps=s.pixel_steps, guidance=s.pixel_guidance)
  result = geneval_scores(prompts, images)
  log(f"eval: generation ceiling of the tokenizer (right scenes, tokenized and decoded) "
      f"{result['overall']:.3f}")
  return result, rendered, np.asarray(images)


def count_word_pieces(sp) -> list[int] | None:
  """The text pieces of "zero" ... "four" (counting_reads' answers), or None where the text
  tokenizer splits any of them."""
  pieces = [sp.encode(w) for w in shapes.NUMBER_WORDS[:5]]
  return None if any(len(p) != 1 for p in pieces) else [p[0] for p in pieces]


def counting_reads(answer_logits, formatter, sp, prompts: list[dict], images: np.ndarray,
                   batch: int = 32) -> dict:
  """How well the model reads a set of images: for each object a prompt asks for, "How many
  <color> <shapes> are there?" about its image, the model's most likely first answer token among
  the count words against the count the judge finds there.

  Only objects the judge finds 1-4 times are asked: asked about an absent kind the model answers
  by the question's presupposition (it says "zero" for almost none), which would make a set of
  images that lack the objects look unreadable rather than wrong. `answer_logits(tokens, mask,
  images)` gives the logits of each prompt's first answer token ([B, vocab]). Returns the
  accuracy, the number asked and the number skipped (absent, or more than four)."""
  words = shapes.NUMBER_WORDS[:5]
  candidates = count_word_pieces(sp)
  if candidates is None:
    raise ValueError(f"counting_reads: the count words {words} must each be one text piece; "
                     f"the tokenizer splits them as {[sp.encode(w) for w in words]}")
  items, skipped = [], 0
  for i, p in enumerate(prompts):
    found = shapes_judge.detect(images[i])
    for req in p["spec"]["include"]:
      count = sum(o.shape == req["shape"] and ("color" not in req or o.color == req["color"])
                  for o in found)
      if not 1 <= count <= 4:
        skipped += 1
        continue
      noun = " ".join(([req["color"]] if "color" in req else []) + [shapes.PLURALS[req["shape"]]])
      items.append((i, f"How many {noun} are there?", count))
  hits = []
  for idx in _batches(len(items), batch):
    cut = [answer_prompt(formatter, shapes.encode_png(images[items[j][0]]), items[j][1])
           for j in idx]
    logits = np.asarray(answer_logits(*padded(cut, formatter.config.image_size)))
    hits += [int(np.argmax(row[candidates])) == items[j][2] for j, row in zip(idx, logits)]
  return {"accuracy": float(np.mean(hits)) if hits else 0.0, "asked": len(hits),
          "skipped": skipped}


def draw_edits(draw, formatter, images: list[bytes], instructions: list[str],
               seed: int) -> np.ndarray:
  """uint8 images `draw` makes of encoded images and edit instructions, with classifier-free
  guidance against the image alone (the unconditional prompt keeps the user's image and drops
  the instruction)."""
  conds, unconds = [], []
  for i, (image, instruction) in enumerate(zip(images, instructions, strict=True)):
    for text, out in ((instruction, conds), ("", unconds)):
      segs = [Segment.of_image(image, "user")] + (
          [Segment.of_text(text, "user")] if text else []) + [draw.placeholder("assistant")]
      out.append(prompt_of(formatter, Document(f"eval/edit/{i}", "edit", segs)))
  return draw(conds, unconds, seed)


def editing(draw, formatter, seed: int, count: int, log=print) -> tuple[dict, list, np.ndarray]:
  """Edit success: the judge finds exactly the edited scene's objects in the output."""
  docs = [shapes.make_document(seed, i, "edit", size=formatter.config.image_size)
          for i in range(count)]
  images = draw_edits(draw, formatter, [d.segments[0].image for d in docs],
                      [d.segments[1].text for d in docs], seed + 7)
  by_kind = collections.defaultdict(list)
  for d, im in zip(docs, images):
    target = shapes.scene_from_description(d.metadata["scene"]).objects
    by_kind[d.metadata["edit_kind"]].append(
        shapes_judge.same_objects(shapes_judge.detect(im), target))
  result = {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}
  result["overall"] = float(np.mean([x for v in by_kind.values() for x in v]))
  result["edits"] = len(docs)
  sources = [shapes.decode_image(d.segments[0].image) for d in docs]
  log(f"eval: editing success {result['overall']:.3f} on {len(docs)} edits")
  return result, [d.metadata["instruction"] for d in docs], np.stack([sources, images], 1)


# ----------------------------------------------------------------------------- interleaved

def interleaved(model, params, formatter, draw, seed: int, count: int, max_images: int = 4,
                max_new_tokens: int = 48, log=print, out_dir: str | None = None) -> dict:
  """Interleaved consistency (eval/interleaved_consistency.py) of the documents the model writes
  from the first sentences of `count` held-out stories (the (seed, "story") stream): text
  greedy, each image drawn by `draw` where the model places it. With `out_dir`, the first three
  documents as pages (document.html, document.json and PNGs, as python -m unimodal_jax.generate
  writes them)."""
  from unimodal_jax import generate
  from unimodal_jax.eval import interleaved_consistency
  stories = [shapes.make_document(seed, i, "story", size=formatter.config.image_size)
             for i in range(count)]
  docs = sampling.generate_document(model, params, formatter, draw,
                                    [d.segments[0].text for d in stories], seed=seed,
                                    max_images=max_images, max_new_tokens=max_new_tokens,
                                    temperature=0.0)
  verdicts = [interleaved_consistency.judge_document(
      doc.segments, shapes.scene_from_description(story.metadata["scenes"][0]))
      for doc, story in zip(docs, stories)]
  summary = interleaved_consistency.summarize(verdicts, len(stories[0].metadata["scenes"]))
  summary["stops"] = dict(collections.Counter(d.stop for d in docs))
  for i, doc in enumerate(docs[:3] if out_dir else []):
    generate.write(os.path.join(out_dir, f"{i:02d}"), f"Held-out story {i}", doc.segments,
                   ["prompt"] + ["model"] * (len(doc.segments) - 1),
                   {"task": "document", "prompt": doc.segments[0].text,
                    "model": type(model).__name__, "stop": doc.stop,
                    "settings": {"seed": seed, "temperature": 0.0, "max_images": max_images},
                    "verdicts": verdicts[i]})
  log(f"eval: interleaved consistency {summary['consistency']:.3f} of {summary['images']} "
      f"images in {len(docs)} documents ({summary['images_per_document']:.2f} per document; "
      f"the stories have {summary['reference_images_per_document']:.0f})")
  return summary


__all__ = ["prompt_of", "decode_answer", "answer_prompt", "padded", "answer_texts", "understanding", "draw_prompts", "generation",
           "generation_ceiling", "first_logits", "count_word_pieces", "counting_reads", "draw_edits", "editing",
           "geneval_scores", "ImageSampling", "CodeDrawer", "DreamDrawer", "interleaved"]
