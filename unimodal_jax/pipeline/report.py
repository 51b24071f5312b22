"""results.md and samples.png of a main job (ILLUME's or DreamLLM's recipe)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# The bars for the tiny main job (POPE-style accuracy, GenEval-style overall).
TARGETS = {"pope_overall": 0.85, "generation_overall": 0.6, "interleaved_consistency": 0.6}


def _row(name, value, target=None):
  mark = "" if target is None else (" (target {:.2f}: {})".format(
      target, "met" if value >= target else "not met"))
  return f"| {name} | {value:.3f}{mark} |"


def _ceiling_cell(ceiling: dict, key: str) -> str:
  return f" {ceiling[key]:.3f} |" if key in ceiling else " - |"


_CEILINGS = {  # generation's ceiling: what the model's image decoder can at best make of prompts
    "tokenizer_ceiling": ("tokenizer ceiling", "The tokenizer's ceiling: the same prompts' "
                          "scenes drawn right, tokenized and decoded to pixels (what the model "
                          "would score writing those codes)."),
    "decoder_ceiling": ("decoder ceiling", "The diffusion decoder's ceiling: the same prompts "
                        "drawn by the U-Net from the CLIP text states it was pretrained on "
                        "(what the dream queries would score conditioning it as well)."),
}


BENCHMARKS = "benchmarks"  # a workdir's folder of evaluation files in the benchmarks' formats


def write_markdown(path: str, results: dict) -> None:
  und, gen, edit = results["understanding"], results["generation"], results.get("editing")
  name = {"dreamllm": "DreamLLM"}.get(results.get("model_kind"), "ILLUME")
  lines = [f"# {name} on the shapes world", "",
           "Held-out scenes and prompts (eval seed), scored from the scenes by the judge.", "",
           "## Understanding", "", "| question | accuracy |", "|---|---|"]
  for k, v in und.items():
    if isinstance(v, float) and k not in ("pope_overall", "pope_auc"):
      lines.append(_row(k, v))
  lines.append(_row("POPE-style overall", und["pope_overall"], TARGETS["pope_overall"]))
  if "pope_auc" in und:  # 0.5: the answer does not depend on the image
    lines.append(_row("POPE-style AUC of the yes - no logit", und["pope_auc"]))
  if "pope" in und:  # the official figures of the existence questions
    p = und["pope"]
    lines += ["", f"POPE's own figures on the {p['questions']} existence questions (its "
              f"evaluate.py rule): precision {p['precision']:.3f}, recall {p['recall']:.3f}, "
              f"F1 {p['f1']:.3f}, yes-ratio {p['yes_ratio']:.3f}. Its files: "
              f"`{BENCHMARKS}/pope/` (re-scored by `python -m unimodal_jax.eval.pope "
              f"--questions=Q --answers=A`)."]
  lines += ["", "## Generation (GenEval-style, judge)", "",
            f"The drawings in GenEval's layout: `{BENCHMARKS}/geneval/` (re-scored by "
            f"`python -m unimodal_jax.eval.geneval --out=DIR`).", ""]
  key = next((k for k in _CEILINGS if gen.get(k)), "tokenizer_ceiling")
  ceiling = gen.get(key) or {}
  if ceiling:
    lines += [_CEILINGS[key][1], ""]
  lines += [f"| category | score | {_CEILINGS[key][0]} |", "|---|---|---|"]
  for k, v in gen.items():
    if isinstance(v, float) and k != "overall":
      lines.append(_row(k, v) + _ceiling_cell(ceiling, k))
  lines.append(_row("overall", gen["overall"], TARGETS["generation_overall"])
               + _ceiling_cell(ceiling, "overall"))
  chosen = gen.get("self_assessed")
  if chosen:  # eval.self_assessed_draws > 1
    lines += ["", f"Drawing {chosen['draws']} images per prompt and keeping the first the model's "
              f"own assessment calls right: overall {chosen['overall']:.3f} (one of the "
              f"{chosen['draws']} drawings was right for {chosen['any_draw_right']:.3f} of the "
              f"prompts; the model kept the first drawing for {chosen['first_draw_kept']:.3f})."]
  if edit:
    lines += ["", "## Editing", "", "| edit | success |", "|---|---|"]
    for k, v in edit.items():
      if isinstance(v, float):
        lines.append(_row(k, v))
  doc = results.get("interleaved")
  if doc:  # documents the model wrote from held-out stories' first sentences
    lines += ["", "## Interleaved documents (images placed by the model, judged against the "
              "sentence before each)", "",
              f"{doc['documents']} documents from held-out stories' first sentences, text "
              f"greedy: {doc['images_per_document']:.2f} images per document (the stories have "
              f"{doc['reference_images_per_document']:.0f}), "
              f"{doc['documents_without_images']} documents without one. Pages: "
              f"`{BENCHMARKS}/interleaved/`.", "",
              "| images following | images | consistent |", "|---|---|---|"]
    lines += [f"| {k} | {n} | {doc['consistency_following'][k]:.3f} |"
              for k, n in doc["following"].items()]
    lines.append(_row("interleaved consistency", doc["consistency"],
                      TARGETS["interleaved_consistency"]))
  assessed = results.get("self_assessment")
  if assessed:  # ILLUME: the model's assessment of its own held-out drawings against the judge's
    lines += ["", "## Self-assessment (the model judges its own drawings)", "",
              f"On {assessed['images']} held-out drawings, asked as the self-assessment "
              f"dialogues ask; an assessment it cannot read ({1 - assessed['parsed']:.3f} of "
              f"them) counts as a disagreement. The judge passes "
              f"{assessed['judge_match_rate']:.3f} of the drawings.", "",
              "| agreement with the judge | share |", "|---|---|",
              _row("overall verdict (matches the prompt or not)", assessed["agreement"]),
              _row("the same, balanced (0.5: a constant verdict)",
                   assessed.get("balanced_agreement", 0.0))]
    for k, v in assessed["per_aspect"].items():
      lines.append(_row(f"aspect: {k}", v))
    reading = assessed.get("reading")
    if reading:  # how well the model reads each kind of image at all
      lines += ["", "Counting the objects each prompt asks for (\"How many ... are there?\", the "
                "judge's count as the truth, objects it finds 1-4 times):", "",
                "| images read | accuracy | asked |", "|---|---|---|"]
      lines += [f"| {k} | {v['accuracy']:.3f} | {v['asked']} |" for k, v in reading.items()]
  lines += ["", "## Wall time per phase (s)", "", "| phase | seconds |", "|---|---|"]
  for k, v in results.get("phase_seconds", {}).items():
    lines.append(f"| {k} | {v:.0f} |")
  for k, v in results.get("eval_seconds", {}).items():  # the eval phase itself, by part
    lines.append(f"| eval: {k} | {v:.0f} |")
  tok = results.get("tokenizer") or {}
  if tok:
    lines += ["", f"Tokenizer: {tok.get('tokens_per_image')} tokens per image, codebook usage "
              f"{tok.get('codebook_usage', 0):.3f}, feature cosine {tok.get('feature_cosine', 0):.4f}, "
              f"judge on reconstructions {tok.get('judge_same_objects', 0):.3f}."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _cell(image: np.ndarray, caption: str, scale: int = 4, width: int = 30) -> Image.Image:
  im = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                     Image.NEAREST)
  words, text_lines, line = caption.split(), [], ""
  for w in words:
    if len(line) + len(w) + 1 > width // 1.4 * scale / 3:
      text_lines.append(line)
      line = w
    else:
      line = (line + " " + w).strip()
  text_lines.append(line)
  cell = Image.new("RGB", (im.width, im.height + 11 * len(text_lines) + 4), "white")
  cell.paste(im, (0, 0))
  draw = ImageDraw.Draw(cell)
  for i, t in enumerate(text_lines):
    draw.text((2, im.height + 2 + 11 * i), t, fill="black")
  return cell


def evenly_spaced(items, n: int) -> list:
  """`n` of `items` (all if fewer) spread over the whole list: the evaluation's prompts come
  grouped by category, so every category shows in the grid, which keeps exactly `n` cells (a
  stride would give n + 1 whenever len(items) is not a multiple of n)."""
  items = list(items)
  if n <= 0:
    return []
  if len(items) <= n:
    return items
  return [items[i * len(items) // n] for i in range(n)]


def write_samples(path: str, generations, edits, cols: int = 4) -> None:
  """A grid: prompts with their generated images (`cols` per row), then edits (source | result,
  twice as wide, half as many per row) with their instructions; each section packs its own
  cells, so no cell is padded to another section's width."""
  sections = [[_cell(im, p) for p, im in generations],
              [_cell(np.concatenate([pair[0], pair[1]], axis=1), ins) for ins, pair in edits]]
  sections = [cells for cells in sections if cells]
  if not sections:
    return
  width = cols * max(c.width for c in sections[0]) if generations else (
      max(1, cols // 2) * max(c.width for c in sections[0]))
  blocks = []
  for cells in sections:
    w, h = max(c.width for c in cells), max(c.height for c in cells)
    per_row = max(1, width // w)
    block = Image.new("RGB", (width, ((len(cells) + per_row - 1) // per_row) * h), "white")
    for i, c in enumerate(cells):
      block.paste(c, ((i % per_row) * w, (i // per_row) * h))
    blocks.append(block)
  grid = Image.new("RGB", (width, sum(b.height for b in blocks)), "white")
  y = 0
  for b in blocks:
    grid.paste(b, (0, y))
    y += b.height
  grid.save(path)
