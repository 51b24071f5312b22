"""ILLUME's self-assessment data (alignment/self_assessment.py): the assessment's schema and its
agreement with GenEval's rules, one-turn against two-turn dialogues, the shard directory written
whole or not at all, and the prompts kept apart from the evaluation's."""
import json

import numpy as np
import pytest

from unimodal_jax.alignment import self_assessment as sa
from unimodal_jax.data import formatting, shards, text_tokenizer
from unimodal_jax.data.documents import Segment
from unimodal_jax.data.vocab import Vocab
from unimodal_jax.data.worlds import geneval, shapes


def _prompt(category, seed=0):
  return geneval.geneval_prompt(category, np.random.default_rng(seed))


def test_every_aspect_yes_exactly_when_geneval_passes_the_objects():
  rng = np.random.default_rng(0)
  seen = {True: 0, False: 0}
  for category in geneval.GENEVAL_CATEGORIES:
    for i in range(60):
      p = geneval.geneval_prompt(category, rng)
      scene = (geneval.render_for_spec(p["spec"], rng, 32) if i % 2
               else shapes.sample_scene(rng, 32))
      a = sa.assess(p["spec"], scene.objects)
      assert tuple(a) == sa.aspects_asked(p["spec"])
      ok = geneval.satisfied(p["spec"], scene.objects)
      assert sa.matches(a) == ok, (p, shapes.describe(scene), a)
      seen[ok] += 1
  assert min(seen.values()) > 50  # both verdicts were exercised


def test_a_failure_is_charged_to_the_aspect_that_fails():
  two_red = {"include": [{"shape": "circle", "count": 2, "color": "red"}], "exclude": []}
  obj = lambda shape, color, x: shapes.Obj(shape, color, "small", x, 0.5)
  assert sa.assess(two_red, [obj("square", "red", 0.2)]) == {"object": "no", "count": "yes",
                                                              "color": "yes"}
  assert sa.assess(two_red, [obj("circle", "red", 0.2)]) == {"object": "yes", "count": "no",
                                                              "color": "yes"}
  assert sa.assess(two_red, [obj("circle", "red", 0.2), obj("circle", "blue", 0.7)]) == {
      "object": "yes", "count": "yes", "color": "no"}
  left = {"include": [{"shape": "square", "count": 1},
                      {"shape": "circle", "count": 1, "position": ["left of", 0]}],
          "exclude": []}
  assert sa.assess(left, [obj("square", "red", 0.2), obj("circle", "red", 0.8)]) == {
      "object": "yes", "position": "no"}
  assert sa.assess(left, [obj("square", "red", 0.8), obj("circle", "red", 0.2)]) == {
      "object": "yes", "position": "yes"}


def test_the_assessment_json_schema():
  spec = _prompt("colors")["spec"]
  a = {"object": "yes", "color": "no"}
  text = sa.to_json(a)
  assert json.loads(text) == a and list(json.loads(text)) == ["object", "color"]
  assert sa.parse_assessment(text, spec) == a
  assert sa.parse_assessment("ASSISTANT: " + text + " trailing", spec) == a
  for bad in ('{"object": "yes"}',  # an aspect the prompt asks is missing
              '{"object": "yes", "color": "no", "count": "no"}',  # one it does not ask
              '{"object": "maybe", "color": "no"}',  # not a verdict
              '{"object": "yes", "color": }', "yes", ""):
    assert sa.parse_assessment(bad, spec) is None, bad


def test_one_turn_for_a_right_drawing_two_turns_for_a_wrong_one(tmp_path):
  rng = np.random.default_rng(1)
  p = _prompt("counting", 3)
  right = shapes.render(geneval.render_for_spec(p["spec"], rng, 32))
  wrong = shapes.render(shapes.Scene((), 32))  # nothing drawn
  codes = lambda images: np.arange(len(images) * 64).reshape(len(images), 64) % 2048
  out = str(tmp_path / "sa")
  figures = sa.write_data(out, [p, p], np.stack([right, wrong]), seed=5, tokenize=codes,
                          log=lambda *a: None)
  assert figures["one_turn"] == 1 and figures["two_turn"] == 1
  good, poor = list(shards.read_documents(out))
  assert [s.role for s in good.segments] == ["user", "user", "assistant"]
  assert good.segments[1].text == sa.question(p["prompt"])
  assert sa.parse_assessment(good.segments[2].text, p["spec"]) == {"object": "yes",
                                                                   "count": "yes"}
  assert [s.role for s in poor.segments] == ["user", "user", "assistant", "user", "assistant"]
  assert sa.parse_assessment(poor.segments[2].text, p["spec"]) == {"object": "no",
                                                                   "count": "yes"}
  assert poor.segments[3].text == sa.correction_request(p["prompt"])
  assert poor.segments[4].type == "image_tokens" and len(poor.segments[4].tokens) == 64
  assert poor.metadata["turns"] == 2 and good.metadata["turns"] == 1
  with pytest.raises(ValueError, match="needs a correction"):
    sa.dialogue("x", p, b"png", {"object": "no", "count": "yes"})
  with pytest.raises(ValueError, match="takes no correction"):
    sa.dialogue("x", p, b"png", {"object": "yes", "count": "yes"}, Segment.of_image(b"png"))


def test_the_longest_dialogue_fits_the_main_jobs_rows(tmp_path):
  """Every category's two-turn dialogue (an image read in 16 slots, the assessment, then 64
  codes written) fits in ILLUME's 160-token rows with the job's text tokenizer, and the
  formatter makes the assessment and the codes targets, not the question."""
  from experiments.tiny import illume_shapes
  from unimodal_jax.pipeline import recipe
  config = illume_shapes.get_config()
  path = str(tmp_path / "spm.model")
  text_tokenizer.train_sentencepiece(recipe._texts_for_tokenizer(config), path,
                                     config.text_vocab_size, model_type=config.text_model_type)
  sp = text_tokenizer.load(path)
  vocab = Vocab.from_sentencepiece(sp, image_codes=2048)
  fmt = formatting.Formatter(sp, vocab, formatting.FormatConfig(
      max_length=config.seq_len, image_size=32, tokens_per_image=16))
  image = shapes.encode_png(np.zeros((32, 32, 3), np.uint8))
  rng = np.random.default_rng(0)
  for category in geneval.GENEVAL_CATEGORIES:
    for _ in range(20):
      p = geneval.geneval_prompt(category, rng)
      worst = {k: "no" for k in sa.aspects_asked(p["spec"])}
      ex = fmt(sa.dialogue("x", p, image, worst, Segment.of_image_tokens([7] * 64)))
      targets = ex["targets"][ex["target_mask"] > 0]
      assert (ex["target_modality"][ex["target_mask"] > 0] == formatting.IMAGE).sum() == 66
      text = sp.decode([int(t) for t in targets if t < vocab.text_size])
      assert sa.to_json(worst) in text and "Is this image" not in text


def test_a_killed_write_leaves_nothing_a_rerun_would_take_for_done(tmp_path):
  p = _prompt("single_object")
  images = np.stack([shapes.render(shapes.Scene((), 32))] * 3)
  out = str(tmp_path / "sa")
  calls = []

  def dies_on_the_third(spec, image):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt  # stands in for the kill
    return sa.judge_assessor(spec, image)

  with pytest.raises(KeyboardInterrupt):
    sa.write_data(out, [p] * 3, images, seed=0, assessor=dies_on_the_third,
                  log=lambda *a: None)
  assert not (tmp_path / "sa").exists()
  figures = sa.write_data(out, [p] * 3, images, seed=0, log=lambda *a: None)
  assert figures["documents"] == 3 and len(list(shards.read_documents(out))) == 3
  assert not (tmp_path / "sa.partial").exists()


def test_agreement_counts_unreadable_assessments_as_disagreements():
  prompts = [_prompt("colors", s) for s in range(4)]
  refs = [{"object": "yes", "color": "yes"}, {"object": "yes", "color": "no"},
          {"object": "no", "color": "yes"}, {"object": "yes", "color": "yes"}]
  texts = [sa.to_json(refs[0]), sa.to_json({"object": "yes", "color": "yes"}),
           sa.to_json(refs[2]), "I think so"]
  r = sa.agreement(prompts, texts, refs)
  assert r["agreement"] == 0.5 and r["parsed"] == 0.75 and r["judge_match_rate"] == 0.5
  assert r["balanced_agreement"] == 0.5  # right drawings 1 of 2, wrong ones 1 of 2
  always_wrong = sa.agreement(prompts, [sa.to_json({"object": "no", "color": "no"})] * 4,
                              refs[1:3] * 2)
  assert always_wrong["agreement"] == 1.0 and always_wrong["balanced_agreement"] == 1.0
  constant = sa.agreement(prompts, [sa.to_json(refs[1])] * 4, refs)
  assert constant["agreement"] == 0.5 and constant["balanced_agreement"] == 0.5
  assert r["per_aspect"] == {"object": 0.75, "color": 0.5}


def test_self_assessment_prompts_must_not_be_the_evaluations(tmp_path):
  from experiments.tiny import illume_shapes
  from unimodal_jax.pipeline import recipe
  config = illume_shapes.get_config("micro")
  config.self_assessment.enabled = True
  config.self_assessment.prompt_seed = config.data.eval_seed
  with pytest.raises(ValueError, match="prompt_seed=1 is the evaluation's seed"):
    recipe.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # refused before any phase
  # The streams differ: no assessment prompt's scene or id is an evaluation one.
  ours = geneval.geneval_prompts(2, 20)
  theirs = geneval.geneval_prompts(int(config.data.eval_seed), 20)
  assert [p["spec"] for p in ours] != [p["spec"] for p in theirs]


def test_table7_summary_pairs_the_arms_and_names_the_papers_figures():
  from experiments.illume import table7
  row = lambda g, p, a: dict({k: g for k in table7.COLUMNS}, pope=p, self_assessment=a)
  rows = {"without": [row(0.30, 0.70, 0.0), row(0.40, 0.80, 0.0)],
          "with": [row(0.35, 0.70, 0.8), row(0.43, 0.78, 0.9)]}
  markdown, table = table7.summarize(rows, [0, 1])
  assert table["stats"]["with"]["overall"] == pytest.approx((0.39, 0.04))
  assert table["delta"]["overall"] == pytest.approx(0.04)
  assert "- overall: +0.050, +0.030 (mean +0.040)" in markdown
  assert "- pope: +0.000, -0.020 (mean -0.010)" in markdown
  assert "0.390 ± 0.040 (0.59)" in markdown and "(0.56)" in markdown


@pytest.mark.slow
def test_table7_micro_runs_both_arms_on_shared_stages(tmp_path):
  from experiments.illume import table7
  from experiments.tiny import illume_shapes
  table = table7.run(illume_shapes.get_config("micro"), str(tmp_path), [0],
                     log=lambda *a: None)
  without, with_ = (json.load(open(tmp_path / "seed0" / arm / "phases.json"))
                    for arm in table7.ARMS)
  assert "self_assessment" in with_ and "self_assessment" not in without
  for name in ("data", "stage1", "stage2"):  # shared, not retrained
    assert with_[name] == without[name]
  assert with_["stage3"]["config"] != without["stage3"]["config"]
  assert (tmp_path / "table7.md").read_text().count("self-assessment |") == 2
  assert set(table["rows"]) == {"without", "with"}


def test_balance_keeps_as_many_right_drawings_as_wrong_ones(tmp_path):
  rng = np.random.default_rng(2)
  p = _prompt("single_object", 4)
  right = [shapes.render(geneval.render_for_spec(p["spec"], rng, 32)) for _ in range(3)]
  wrong = shapes.render(shapes.Scene((), 32))
  images = np.stack(right + [wrong])
  figures = sa.write_data(str(tmp_path / "b"), [p] * 4, images, seed=0, balance=True,
                          log=lambda *a: None)
  assert (figures["one_turn"], figures["two_turn"], figures["drawings"]) == (1, 1, 4)
  assert figures["match_rate"] == 0.75  # of all the drawings, not of the kept ones
  turns = sorted(d.metadata["turns"] for d in shards.read_documents(str(tmp_path / "b")))
  assert turns == [1, 2] and figures["balanced"]
  # Every drawing wrong: nothing to balance against, so all are kept (stage 3 gets its source).
  logs = []
  figures = sa.write_data(str(tmp_path / "c"), [p] * 2, np.stack([wrong, wrong]), seed=0,
                          balance=True, log=logs.append)
  assert (figures["documents"], figures["balanced"]) == (2, False)
  assert "all 2 drawings are wrong; kept unbalanced" in logs[0]


def test_the_model_s_pick_is_the_first_draw_it_calls_right():
  prompts = [_prompt("colors", s) for s in range(3)]
  draws = [np.full((3, 2, 2, 3), n, np.uint8) for n in range(3)]
  yes, no = '{"object": "yes", "color": "yes"}', '{"object": "yes", "color": "no"}'
  texts = [[no, yes, no], [yes, yes, "garbled"], [no, no, no]]
  chosen, picks = sa.choose_by_self_assessment(prompts, draws, texts)
  assert picks == [1, 0, 0]  # prompt 2: none called right, so its first draw
  assert [int(im[0, 0, 0]) for im in chosen] == [1, 0, 0]
