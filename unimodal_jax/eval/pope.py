"""POPE (Li et al., 2023) in its own file formats, scored by its official rule.

    python -m unimodal_jax.eval.pope --questions=Q.jsonl --answers=A.jsonl
    python -m unimodal_jax.eval.pope --questions=Q.jsonl --answers=A.jsonl --workdir=W --image_dir=D

Questions: the official JSON lines, {"question_id", "image", "text", "label": "yes" | "no"}.
Answers: JSON lines {"question_id", "question", "answer"}, matched to the questions by
question_id (the official script pairs them by line order; matching by id scores the same file
the same way and cannot silently pair the wrong lines).

The rule (POPE's evaluate.py): only the text before the first "." counts; commas are removed;
the words are split on single spaces; the answer is "no" when one of them is exactly `No`, `no`
or `not`, otherwise "yes". So "Not at all." reads as yes and an empty answer as yes: that is the
rule the papers' figures were computed with, kept as it is.

The first form scores an existing answers file; with --workdir the model of that ILLUME or
DreamLLM workdir first answers every question (images from --image_dir) and writes the answers
file. Prints, last, one JSON line: accuracy, precision, recall, f1, yes_ratio and the counts.
"""
from __future__ import annotations

import os

from unimodal_jax.eval import jsonl
from unimodal_jax.eval.jsonl import FormatError

LABELS = ("yes", "no")


def read_questions(path: str) -> list[dict]:
  """The questions of an official POPE file, checked: ids unique, labels yes or no."""
  questions, seen = [], {}
  for n, q in jsonl.read(path):
    where = f"{path}, line {n}"
    jsonl.require(q, {"question_id": (int, str), "image": str, "text": str, "label": str}, where)
    if q["label"] not in LABELS:
      raise FormatError(f"{where}: label {q['label']!r}; expected 'yes' or 'no'")
    if q["question_id"] in seen:
      raise FormatError(f"{where}: question_id {q['question_id']!r} repeats line "
                        f"{seen[q['question_id']]}")
    seen[q["question_id"]] = n
    questions.append(q)
  if not questions:
    raise FormatError(f"{path}: no questions")
  return questions


def read_answers(path: str, questions: list[dict]) -> dict:
  """{question_id: answer text} of an answers file, one answer for each question and none for a
  question the questions file lacks."""
  wanted = {q["question_id"] for q in questions}
  answers, seen = {}, {}
  for n, a in jsonl.read(path):
    where = f"{path}, line {n}"
    jsonl.require(a, {"question_id": (int, str), "answer": str}, where)
    qid = a["question_id"]
    if qid in seen:
      raise FormatError(f"{where}: question_id {qid!r} answered twice (line {seen[qid]})")
    if qid not in wanted:
      raise FormatError(f"{where}: question_id {qid!r} is not in the questions file")
    seen[qid] = n
    answers[qid] = a["answer"]
  missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
  if missing:
    raise FormatError(f"{path}: {len(missing)} of {len(questions)} questions have no answer "
                      f"(the first: question_id {missing[0]!r})")
  return answers


def official_label(answer: str) -> str:
  """"yes" or "no", as POPE's evaluate.py reads an answer."""
  text = answer.split(".")[0].replace(",", "")
  words = text.split(" ")
  return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def score(questions: list[dict], answers: dict) -> dict:
  """POPE's figures: accuracy, precision, recall, F1 and the share of "yes" ("yes" is the
  positive class). Where the official script divides by zero (no "yes" predicted, say) the
  figure is 0.0."""
  tp = fp = tn = fn = 0
  for q in questions:
    yes_pred = official_label(answers[q["question_id"]]) == "yes"
    yes_true = q["label"] == "yes"
    tp += yes_pred and yes_true
    fp += yes_pred and not yes_true
    tn += not yes_pred and not yes_true
    fn += not yes_pred and yes_true
  n = tp + fp + tn + fn
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
          "yes_ratio": (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "questions": n}


def write_answers(path: str, questions: list[dict], texts: list[str]) -> None:
  """The answers file, in the questions' order."""
  jsonl.write(path, [{"question_id": q["question_id"], "question": q["text"], "answer": t}
                     for q, t in zip(questions, texts, strict=True)])


def answer_questions(model, questions: list[dict], image_dir: str, batch: int = 32,
                     log=print) -> list[str]:
  """The answers of a loaded model (unimodal_jax.load) to each question about its image."""
  from unimodal_jax.data import images as images_lib
  paths = [os.path.join(image_dir, q["image"]) for q in questions]
  absent = [p for p in paths if not os.path.exists(p)]
  if absent:
    raise FormatError(f"{len(absent)} of {len(paths)} question images are missing from "
                      f"{image_dir} (the first: {absent[0]})")
  texts = []
  for i in range(0, len(questions), batch):
    chunk = questions[i:i + batch]
    ims = [images_lib.read_rgb(p) for p in paths[i:i + batch]]
    texts += model.answer(ims, [q["text"] for q in chunk])
    log(f"pope: answered {len(texts)}/{len(questions)}")
  return texts


def main(argv):
  import json
  from unimodal_jax.data.images import ImageError
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    questions = read_questions(_QUESTIONS.value)
    if _WORKDIR.value:
      if not _IMAGE_DIR.value:
        raise SystemExit("error: --workdir needs --image_dir (where the questions' images are)")
      import unimodal_jax
      model = unimodal_jax.load(_WORKDIR.value)
      write_answers(_ANSWERS.value, questions,
                    answer_questions(model, questions, _IMAGE_DIR.value))
      print(f"pope: wrote {_ANSWERS.value}", flush=True)
    answers = read_answers(_ANSWERS.value, questions)
  except (FormatError, ImageError) as e:
    raise SystemExit(f"error: {e}")
  print(json.dumps(score(questions, answers), sort_keys=True))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, flags
  _QUESTIONS = flags.DEFINE_string("questions", None, "POPE questions, JSON lines "
                                   "{question_id, image, text, label}")
  _ANSWERS = flags.DEFINE_string("answers", None, "answers, JSON lines {question_id, question, "
                                 "answer}: read and scored; written first with --workdir")
  _WORKDIR = flags.DEFINE_string("workdir", "", "an ILLUME or DreamLLM workdir (or stage "
                                 "directory) whose model answers the questions first")
  _IMAGE_DIR = flags.DEFINE_string("image_dir", "", "the folder the questions' `image` names "
                                   "are in (with --workdir)")
  flags.mark_flags_as_required(["questions", "answers"])
  app.run(main)
