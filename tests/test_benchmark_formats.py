"""POPE, GenEval and MME in their own file formats (eval/pope.py, eval/geneval.py, eval/mme.py):
the official scoring rules on answers written to trip them, the folder layouts, and named errors
for bad files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unimodal_jax.data.worlds import geneval as world_geneval
from unimodal_jax.data.worlds import shapes
from unimodal_jax.eval import geneval, jsonl, mme, pope
from unimodal_jax.eval import shapes_judge
from unimodal_jax.eval.jsonl import FormatError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(module, *args):
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  return out.returncode, out.stdout, out.stderr


# ------------------------------------------------------------------------------------- POPE

def _official_pope(answer_texts, labels):
  """POPE's evaluate.py as its authors wrote the loop: answers paired with labels by line order,
  first sentence, commas dropped, split on single spaces, No/no/not -> no."""
  preds = []
  for text in answer_texts:
    if text.find(".") != -1:
      text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    preds.append(0 if ("No" in words or "not" in words or "no" in words) else 1)
  gold = [0 if x == "no" else 1 for x in labels]
  tp = sum(p == 1 and g == 1 for p, g in zip(preds, gold))
  fp = sum(p == 1 and g == 0 for p, g in zip(preds, gold))
  tn = sum(p == 0 and g == 0 for p, g in zip(preds, gold))
  fn = sum(p == 0 and g == 1 for p, g in zip(preds, gold))
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  return {"accuracy": (tp + tn) / len(gold), "precision": precision, "recall": recall,
          "f1": 2 * precision * recall / (precision + recall), "yes_ratio": preds.count(1) /
          len(preds)}


TRIPS = ["Not at all.", "No, there is not.", "Yes. But no.", "", "no", "Yes", "There is no cat",
         "not sure", "nope", "No.", "yes, no doubt", "NO", "It is not there. Yes."]


def test_pope_rule_on_answers_written_to_trip_it():
  want = ["yes", "no", "yes", "yes", "no", "yes", "no", "no", "yes", "no", "no", "yes", "no"]
  assert [pope.official_label(t) for t in TRIPS] == want


def _pope_files(tmp_path, answers_order):
  labels = ["yes", "no"] * 7
  questions = [{"question_id": i + 1, "image": f"im{i}.png", "text": f"Is there a thing {i}?",
                "label": labels[i]} for i in range(len(TRIPS))]
  jsonl.write(str(tmp_path / "q.jsonl"), questions)
  texts = TRIPS
  jsonl.write(str(tmp_path / "a.jsonl"), [{"question_id": questions[i]["question_id"],
                                           "question": questions[i]["text"], "answer": texts[i]}
                                          for i in answers_order])
  return questions, [q["label"] for q in questions]


def test_pope_score_matches_the_official_script_with_answers_out_of_order(tmp_path):
  order = list(np.random.default_rng(0).permutation(len(TRIPS)))
  questions, labels = _pope_files(tmp_path, order)
  got = pope.score(pope.read_questions(str(tmp_path / "q.jsonl")),
                   pope.read_answers(str(tmp_path / "a.jsonl"), questions))
  want = _official_pope(TRIPS, labels)  # the official pairing: in question order
  for k, v in want.items():
    assert got[k] == pytest.approx(v), k
  assert got["tp"] + got["fp"] + got["tn"] + got["fn"] == len(TRIPS)
  # The same answers in question order score the same: they are matched by question_id.
  _pope_files(tmp_path / "ordered", range(len(TRIPS)))
  in_order = pope.score(questions, pope.read_answers(str(tmp_path / "ordered" / "a.jsonl"), questions))
  assert in_order == got
  rc, out, err = _cli("unimodal_jax.eval.pope", f"--questions={tmp_path / 'q.jsonl'}",
                      f"--answers={tmp_path / 'a.jsonl'}")
  assert rc == 0, err
  last = json.loads(out.strip().splitlines()[-1])
  assert last["f1"] == pytest.approx(want["f1"])
  assert set(last) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def test_pope_all_no_answers_score_zero_precision_instead_of_dividing_by_zero():
  qs = [{"question_id": i, "label": lab} for i, lab in enumerate(["yes", "no", "no"])]
  got = pope.score(qs, {0: "no", 1: "No.", 2: "not"})
  assert (got["precision"], got["recall"], got["f1"], got["yes_ratio"]) == (0, 0, 0, 0)
  assert got["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("questions,answers,message", [
    ('{"question_id": 1, "image": "a.png", "text": "Is there?", "label": "yes"}\n{"question_id": 2',
     "", "line 2: not JSON"),
    ('{"question_id": 1, "image": "a.png", "text": "Is there?", "label": "maybe"}', "",
     "label 'maybe'"),
    ('{"question_id": 1, "image": "a.png", "label": "yes"}', "", "missing 'text'"),
    ('{"question_id": 1, "image": "a.png", "text": "?", "label": "yes"}\n'
     '{"question_id": 1, "image": "b.png", "text": "?", "label": "no"}', "", "repeats line 1"),
    ('{"question_id": 1, "image": "a.png", "text": "?", "label": "yes"}',
     '{"question_id": 1, "answer": "yes"}\n{"question_id": 1, "answer": "no"}', "answered twice"),
    ('{"question_id": 1, "image": "a.png", "text": "?", "label": "yes"}',
     '{"question_id": 7, "answer": "yes"}', "7 is not in the questions file"),
    ('{"question_id": 1, "image": "a.png", "text": "?", "label": "yes"}\n'
     '{"question_id": 2, "image": "a.png", "text": "?", "label": "no"}',
     '{"question_id": 1, "answer": "yes"}', "1 of 2 questions have no answer"),
])
def test_pope_bad_files_are_named_errors(tmp_path, questions, answers, message):
  (tmp_path / "q.jsonl").write_text(questions)
  (tmp_path / "a.jsonl").write_text(answers)
  with pytest.raises(FormatError, match=message):
    qs = pope.read_questions(str(tmp_path / "q.jsonl"))
    pope.read_answers(str(tmp_path / "a.jsonl"), qs)


def test_pope_missing_and_broken_images_are_named_before_the_model_answers(tmp_path):
  qs = [{"question_id": i, "image": f"{i}.png", "text": "Is there?", "label": "yes"}
        for i in range(3)]
  (tmp_path / "0.png").write_bytes(shapes.encode_png(np.zeros((4, 4, 3), np.uint8)))
  with pytest.raises(FormatError, match=r"2 of 3 question images are missing .*1\.png"):
    pope.answer_questions(None, qs, str(tmp_path))  # refused before any model call
  from unimodal_jax.data.images import ImageError
  (tmp_path / "1.png").write_bytes(b"not a png")
  (tmp_path / "2.png").write_bytes(b"")

  class Reader:  # stands in for a loaded model: answers "yes" to whatever it is shown
    def answer(self, images, questions):
      return ["yes"] * len(questions)
  with pytest.raises(ImageError, match="1.png: cannot decode image"):
    pope.answer_questions(Reader(), qs, str(tmp_path), log=lambda *a: None)


def test_pope_cli_names_a_malformed_line_and_exits_nonzero(tmp_path):
  (tmp_path / "q.jsonl").write_text('{"question_id": 1,\n')
  (tmp_path / "a.jsonl").write_text("")
  rc, _, err = _cli("unimodal_jax.eval.pope", f"--questions={tmp_path / 'q.jsonl'}",
                    f"--answers={tmp_path / 'a.jsonl'}")
  assert rc != 0 and "q.jsonl, line 1: not JSON" in err


# ----------------------------------------------------------------------------------- GenEval

def test_geneval_metadata_round_trips_the_worlds_specs():
  prompts = world_geneval.geneval_prompts(seed=5, per_category=3)
  for p in prompts:
    line = geneval.from_world_prompt(p)
    geneval.check_line(line, "x", geneval.shapes_judge.classes, geneval.shapes_judge.colors)
    assert line["tag"] == p["category"] and "shape" not in json.dumps(line)
    assert geneval.to_spec(line) == {"include": p["spec"]["include"],
                                     "exclude": p["spec"].get("exclude", [])}


def test_geneval_folder_has_the_official_layout_and_rescores_the_same(tmp_path):
  prompts = world_geneval.geneval_prompts(seed=1, per_category=2)
  rng = np.random.default_rng(0)
  right = [shapes.render(world_geneval.render_for_spec(p["spec"], rng, size=32))
           for p in prompts]
  blank = np.full((32, 32, 3), 255, np.uint8)
  images = [[r, blank] if i % 3 else [r] for i, r in enumerate(right)]
  lines = [geneval.from_world_prompt(p) for p in prompts]
  out = tmp_path / "out"
  geneval.write_folder(str(out), lines, images)
  for i, ims in enumerate(images):
    folder = out / f"{i:05d}"
    assert [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()] == [
        lines[i]]
    assert sorted(os.listdir(folder / "samples")) == [f"{j:04d}.png" for j in range(len(ims))]
  got = geneval.score_folder(str(out), log=lambda *a: None)
  # Reference: the judge on each image, the share per tag, the mean of the tags.
  per_tag = {}
  for p, ims in zip(prompts, images):
    per_tag.setdefault(p["category"], []).extend(shapes_judge.score(p["spec"], im) for im in ims)
  want = {t: float(np.mean(v)) for t, v in per_tag.items()}
  assert {t: got[t] for t in want} == pytest.approx(want)
  assert got["overall"] == pytest.approx(np.mean(list(want.values())))
  assert got["images"] == sum(map(len, images)) and got["prompts"] == len(prompts)
  assert 0 < got["overall"] < 1  # right scenes pass, blank ones fail: both kinds are present
  results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
  assert len(results) == got["images"] and all(isinstance(r["correct"], bool) for r in results)
  rc, stdout, err = _cli("unimodal_jax.eval.geneval", f"--out={out}")
  assert rc == 0, err
  assert json.loads(stdout.strip().splitlines()[-1]) == pytest.approx(got)


def test_geneval_summary_is_the_mean_over_tags_of_each_tags_share():
  rng = np.random.default_rng(3)
  tags = list(rng.choice(["a", "b", "c"], size=50))
  correct = list(rng.random(50) < 0.4)
  got = geneval.summarize(tags, correct)
  shares = {t: np.mean([c for tt, c in zip(tags, correct) if tt == t]) for t in set(tags)}
  assert got["overall"] == pytest.approx(np.mean(list(shares.values())))
  assert list(got)[:3] == list(dict.fromkeys(tags))  # GenEval's groupby(sort=False) order


GOOD = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
        "prompt": "a photo of a red circle"}


@pytest.mark.parametrize("line,message", [
    ({**GOOD, "tag": "colour"}, "unknown tag 'colour'"),
    ({**GOOD, "include": [{"class": "teddy bear", "count": 1}]}, "unknown class 'teddy bear'"),
    ({**GOOD, "include": [{"class": "circle", "count": 1, "color": "mauve"}]},
     "unknown color 'mauve'"),
    ({**GOOD, "include": [{"class": "circle", "count": 0}]}, "count 0"),
    ({**GOOD, "include": [{"class": "circle", "count": 1, "position": ["left of", 0]}]},
     "position"),
    ({"tag": "colors", "prompt": "x"}, "missing 'include'"),
])
def test_geneval_bad_metadata_lines_are_named_errors(tmp_path, line, message):
  path = tmp_path / "m.jsonl"
  path.write_text(json.dumps(GOOD) + "\n" + json.dumps(line) + "\n")
  with pytest.raises(FormatError, match=f"line 2.*{message}"):
    geneval.read_metadata(str(path), geneval.shapes_judge.classes, geneval.shapes_judge.colors)


def test_geneval_folder_without_samples_is_a_named_error(tmp_path):
  geneval.write_folder(str(tmp_path), [GOOD, GOOD], [[np.zeros((8, 8, 3), np.uint8)], []])
  with pytest.raises(FormatError, match="00001/samples: no samples"):
    geneval.score_folder(str(tmp_path))


# --------------------------------------------------------------------------------------- MME

def test_mme_rule_on_answers_written_to_trip_it():
  cases = {"Yes": "yes", "no": "no", "No.": "no", "yes, there is": "yes", "Not really": "no",
           "I think yes": "other", "": "other", "none": "no", "YES!": "yes", "Nyes": "yes"}
  assert {k: mme.official_label(k) for k in cases} == cases


def _mme_results(path, rows):
  path.write_text("".join("\t".join(r) + "\n" for r in rows))


def test_mme_scores_acc_and_acc_plus_per_category(tmp_path):
  rows = [("a.png", "Is there a circle?", "Yes", "Yes"), ("a.png", "Is there a cross?", "No", "No"),
          ("b.png", "Is there a square?", "Yes", "yes, it is"),
          ("b.png", "Is there a circle?", "No", "Yes"),
          ("c.png", "Is there a cross?", "Yes", "maybe"), ("c.png", "Is there a star?", "No", "no")]
  _mme_results(tmp_path / "existence.txt", rows)
  _mme_results(tmp_path / "color.txt", rows[:2])
  got = mme.score_results(str(tmp_path))
  # 4 of 6 right ("maybe" is "other", wrong); only a.png has both right.
  assert got["existence"]["acc"] == pytest.approx(4 / 6)
  assert got["existence"]["acc_plus"] == pytest.approx(1 / 3)
  assert got["existence"]["score"] == pytest.approx(100 * (4 / 6 + 1 / 3))
  assert got["perception"] == pytest.approx(got["existence"]["score"] + 200)
  assert got["cognition"] == 0
  rc, out, err = _cli("unimodal_jax.eval.mme", f"--results_dir={tmp_path}")
  assert rc == 0, err
  assert json.loads(out.strip().splitlines()[-1])["existence"]["acc"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("rows,message", [
    ([("a.png", "q", "Yes", "yes")], "'a.png' has 1 questions"),
    ([("a.png", "q", "Maybe", "yes"), ("a.png", "q", "No", "no")], "ground truth 'Maybe'"),
    ([("a.png", "q", "Yes")], "expected 4 tab-separated fields"),
])
def test_mme_bad_results_are_named_errors(tmp_path, rows, message):
  _mme_results(tmp_path / "count.txt", rows)
  with pytest.raises(FormatError, match=message):
    mme.score_results(str(tmp_path))


def test_mme_dataset_layouts_and_their_bad_inputs(tmp_path):
  png = shapes.encode_png(np.zeros((8, 8, 3), np.uint8))
  flat = tmp_path / "existence"
  flat.mkdir()
  (flat / "1.png").write_bytes(png)
  (flat / "1.txt").write_text("Is there a circle?\tYes\nIs there a cross?\tNo\n")
  nested = tmp_path / "scene"
  (nested / "images").mkdir(parents=True)
  (nested / "questions_answers_YN").mkdir()
  (nested / "images" / "2.jpg").write_bytes(png)
  (nested / "questions_answers_YN" / "2.txt").write_text("Q1?\tNo\nQ2?\tYes\n")
  assert mme.read_category(str(flat)) == [(str(flat / "1.png"), "Is there a circle?", "yes"),
                                          (str(flat / "1.png"), "Is there a cross?", "no")]
  assert [x[2] for x in mme.read_category(str(nested))] == ["no", "yes"]
  (flat / "3.txt").write_text("Q?\tYes\nQ?\tNo\n")
  with pytest.raises(FormatError, match="3.txt: no image 3"):
    mme.read_category(str(flat))
  os.remove(flat / "3.txt")
  (flat / "1.txt").write_text("Q?\tYes\nQ?\tNo\nQ?\tNo\n")
  with pytest.raises(FormatError, match="3 questions"):
    mme.read_category(str(flat))


# ------------------------------------------------------------------ the world in those formats

def test_world_exports_the_evaluations_questions_and_true_mme_pairs(tmp_path):
  import re
  from unimodal_jax.data.worlds import benchmark_files
  counts = benchmark_files.write_all(str(tmp_path), seed=1, size=32, pope_per_style=4,
                                     geneval_per_category=2, mme_per_category=5)
  assert counts["pope"] == {"random": 4, "popular": 4, "adversarial": 4} and counts["geneval"] == 12
  # POPE: exactly the existence questions the main jobs' evaluation asks, in POPE's files.
  asked = [d for d in shapes.held_out_questions(1, 4, 4, 32)
           if d.metadata["question_type"] == "existence"]
  written = [q for s in shapes.POPE_STYLES for q in pope.read_questions(
      str(tmp_path / "pope" / f"{s}.jsonl"))]
  assert sorted((q["text"], q["label"]) for q in written) == sorted(
      (d.segments[1].text, d.metadata["answer"]) for d in asked)
  for q in written:
    assert (tmp_path / "pope" / "images" / q["image"]).exists()
  lines = geneval.read_metadata(str(tmp_path / "geneval" / "evaluation_metadata.jsonl"))
  assert lines == [geneval.from_world_prompt(p) for p in world_geneval.geneval_prompts(1, 2)]
  # MME: every "Yes" question is true of its image and every "No" false, read back by the judge.
  for category in benchmark_files.MME_CATEGORIES:
    items = mme.read_category(str(tmp_path / "mme" / category))
    assert len(items) == 10 and [x[2] for x in items] == ["yes", "no"] * 5
    for image, question, truth in items:
      found = shapes_judge.detect(np.asarray(shapes.decode_image(open(image, "rb").read())))
      if category == "existence":
        color, shape = re.match(r"Is there an? (\w+) (\w+) in the image\?", question).groups()
        holds = any(o.shape == shape and o.color == color for o in found)
      elif category == "count":
        number, noun = re.match(r"(?:Is|Are) there (\w+) (\w+) in the image\?", question).groups()
        shape = next(s for s in shapes.SHAPES if noun in (s, shapes.PLURALS[s]))
        holds = sum(o.shape == shape for o in found) == shapes.NUMBER_WORDS.index(number)
      elif category == "color":
        shape, color = re.match(r"Is the (\w+) (\w+)\?", question).groups()
        holds = [o.color for o in found if o.shape == shape] == [color]
      else:
        continue  # position: the pair's wording is checked below
      assert holds == (truth == "yes"), (category, image, question)
  positions = mme.read_category(str(tmp_path / "mme" / "position"))
  words = lambda q: set(q.replace("?", "").split())
  for yes, no in zip(positions[::2], positions[1::2]):  # the same objects, the relation turned
    assert yes[0] == no[0] and len(words(yes[1]) ^ words(no[1])) == 2
