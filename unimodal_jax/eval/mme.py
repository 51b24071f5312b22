"""MME (Fu et al., 2023) in its own file formats, scored as its eval_tool/calculation.py does.

    python -m unimodal_jax.eval.mme --results_dir=R
    python -m unimodal_jax.eval.mme --data_dir=D --workdir=W --results_dir=R

Data: one folder per category; each image comes with a `<image stem>.txt` of two lines
`question<TAB>answer` (answer Yes or No), beside the image or, for the categories MME ships that
way, in `questions_answers_YN/` with the images in `images/`. Results: `R/<category>.txt`, one
line per question, `image<TAB>question<TAB>ground truth<TAB>prediction`, the two questions of an
image together: the files MME's calculation.py reads.

The rule (calculation.py): the prediction, lower-cased, is "yes" or "no" when it is exactly that,
else "yes" if its first four characters contain "yes", else "no" if they contain "no", else
"other" (always wrong). Per category: acc, the share of questions right; acc+, the share of
images with both questions right; score = 100 x (acc + acc+). `perception` and `cognition` sum
the scores of MME's categories of each kind that are present.

The second form answers every question with the model of an ILLUME or DreamLLM workdir and
writes R first. Prints, last, one JSON line: per category acc, acc_plus and score, and the sums.
"""
from __future__ import annotations

import collections
import os

from unimodal_jax.eval.jsonl import FormatError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation",
             "code_reasoning")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_category(folder: str) -> list[tuple[str, str, str]]:
  """[(image path, question, "yes" | "no")] of one category folder of the MME dataset."""
  qa_dir, image_dir = folder, folder
  if os.path.isdir(os.path.join(folder, "questions_answers_YN")):
    qa_dir, image_dir = (os.path.join(folder, "questions_answers_YN"),
                         os.path.join(folder, "images"))
  items = []
  for name in sorted(f for f in os.listdir(qa_dir) if f.endswith(".txt")):
    stem = name[:-4]
    image = next((os.path.join(image_dir, stem + s) for s in IMAGE_SUFFIXES
                  if os.path.exists(os.path.join(image_dir, stem + s))), None)
    if image is None:
      raise FormatError(f"{os.path.join(qa_dir, name)}: no image {stem}.png/.jpg in {image_dir}")
    with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
      lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    if len(lines) != 2:
      raise FormatError(f"{os.path.join(qa_dir, name)}: {len(lines)} questions; MME asks two "
                        f"per image")
    for n, ln in enumerate(lines, start=1):
      parts = ln.split("\t")
      if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
        raise FormatError(f"{os.path.join(qa_dir, name)}, line {n}: expected "
                          f"'question<TAB>Yes|No', got {ln!r}")
      items.append((image, parts[0], parts[1].strip().lower()))
  if not items:
    raise FormatError(f"{qa_dir}: no question files (<image>.txt)")
  return items


def read_results(path: str) -> list[tuple[str, str, str, str]]:
  """[(image, question, ground truth, prediction)] of one results file."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, ln in enumerate(f, start=1):
      if not ln.strip():
        continue
      parts = ln.rstrip("\n").split("\t")
      if len(parts) != 4:
        raise FormatError(f"{path}, line {n}: expected 4 tab-separated fields (image, question, "
                          f"ground truth, prediction), got {len(parts)}")
      if parts[2].lower() not in ("yes", "no"):
        raise FormatError(f"{path}, line {n}: ground truth {parts[2]!r}; expected Yes or No")
      rows.append(tuple(parts))
  if not rows:
    raise FormatError(f"{path}: no results")
  return rows


def official_label(prediction: str) -> str:
  """"yes", "no" or "other", as MME's calculation.py reads a prediction."""
  p = prediction.lower()
  if p in ("yes", "no"):
    return p
  return "yes" if "yes" in p[:4] else "no" if "no" in p[:4] else "other"


def score_category(rows, where: str = "") -> dict:
  """acc, acc_plus and score of one category's results (two questions per image)."""
  by_image = collections.OrderedDict()
  for image, _, truth, pred in rows:
    by_image.setdefault(image, []).append(official_label(pred) == truth.lower())
  odd = [im for im, v in by_image.items() if len(v) != 2]
  if odd:
    raise FormatError(f"{where}: image {odd[0]!r} has {len(by_image[odd[0]])} questions; MME "
                      f"asks two per image")
  right = [x for v in by_image.values() for x in v]
  acc = sum(right) / len(right)
  acc_plus = sum(all(v) for v in by_image.values()) / len(by_image)
  return {"acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus),
          "images": len(by_image)}


def score_results(results_dir: str) -> dict:
  """Every R/<category>.txt scored, with the perception and cognition sums."""
  if not os.path.isdir(results_dir):
    raise FormatError(f"{results_dir}: no such folder")
  names = sorted(f[:-4] for f in os.listdir(results_dir) if f.endswith(".txt"))
  if not names:
    raise FormatError(f"{results_dir}: no results files (<category>.txt)")
  out = {c: score_category(read_results(os.path.join(results_dir, c + ".txt")),
                           os.path.join(results_dir, c + ".txt")) for c in names}
  out["perception"] = sum(out[c]["score"] for c in names if c in PERCEPTION)
  out["cognition"] = sum(out[c]["score"] for c in names if c in COGNITION)
  return out


def write_results(path: str, items, predictions) -> None:
  """One category's results file from read_category's items and the model's answers."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for (image, question, truth), pred in zip(items, predictions, strict=True):
      clean = " ".join(pred.split())  # a tab or newline in an answer would break the line
      f.write(f"{os.path.basename(image)}\t{question}\t{truth.capitalize()}\t{clean}\n")


def answer_dataset(model, data_dir: str, results_dir: str, batch: int = 32, log=print) -> None:
  """The model's answers to every category under data_dir, written as results files."""
  from unimodal_jax.data import images as images_lib
  categories = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
  if not categories:
    raise FormatError(f"{data_dir}: no category folders")
  for c in categories:
    items = read_category(os.path.join(data_dir, c))
    preds = []
    for i in range(0, len(items), batch):
      chunk = items[i:i + batch]
      preds += model.answer([images_lib.read_rgb(p) for p, _, _ in chunk],
                            [q for _, q, _ in chunk])
    write_results(os.path.join(results_dir, c + ".txt"), items, preds)
    log(f"mme: {c}: answered {len(items)} questions")


def main(argv):
  import json
  from unimodal_jax.data.images import ImageError
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    if _WORKDIR.value or _DATA_DIR.value:
      if not (_WORKDIR.value and _DATA_DIR.value):
        raise SystemExit("error: answering needs both --data_dir and --workdir")
      import unimodal_jax
      answer_dataset(unimodal_jax.load(_WORKDIR.value), _DATA_DIR.value, _RESULTS_DIR.value)
    scores = score_results(_RESULTS_DIR.value)
  except (FormatError, ImageError) as e:
    raise SystemExit(f"error: {e}")
  print(json.dumps(scores, sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  _RESULTS_DIR = flags.DEFINE_string("results_dir", None, "R/<category>.txt results files: "
                                     "scored; written first with --workdir")
  _DATA_DIR = flags.DEFINE_string("data_dir", "", "the MME dataset (a folder per category) "
                                  "to answer with --workdir")
  _WORKDIR = flags.DEFINE_string("workdir", "", "an ILLUME or DreamLLM workdir (or stage "
                                 "directory) whose model answers")
  flags.mark_flags_as_required(["results_dir"])
  app.run(main)
