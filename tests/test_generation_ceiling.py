"""The tokenizer's ceiling on GenEval-style prompts (pipeline/evaluate.generation_ceiling):
scenes drawn to satisfy each prompt, through the codec, judged. Checked with codecs whose
output is known: a lossless one must score 1 in every category, one that loses every object 0.
And counting_reads, which asks the model to count the prompts' objects in a set of images (the
rendered scenes, their reconstructions, its drawings), checked with readers whose answers are
known."""
import numpy as np
import pytest

from unimodal_jax.data.worlds import geneval, shapes
from unimodal_jax.eval import shapes_judge
from unimodal_jax.pipeline import evaluate, report


class _RecordingCodec:
  """tokenize keeps the images and returns their indices; detokenize gives them back
  (lossless) or gives the empty background (everything lost)."""
  image_size = 32

  def __init__(self, lossless: bool):
    self.lossless, self.images = lossless, None

  def tokenize(self, images):
    self.images = np.asarray(images)
    return np.arange(len(images))[:, None]

  def detokenize(self, codes, rng, *, steps, guidance):
    if self.lossless:
      return self.images[np.asarray(codes)[:, 0]]
    blank = np.broadcast_to(np.asarray(shapes.BACKGROUND, np.uint8), self.images.shape[1:])
    return np.stack([blank] * len(codes))


def test_ceiling_is_one_for_a_lossless_codec_and_zero_when_objects_are_lost():
  s = evaluate.ImageSampling()
  lossless = _RecordingCodec(True)
  perfect, rendered, decoded = evaluate.generation_ceiling(lossless, 1, 3, s,
                                                           log=lambda *a: None)
  lost = evaluate.generation_ceiling(_RecordingCodec(False), 1, 3, s, log=lambda *a: None)[0]
  np.testing.assert_array_equal(rendered, lossless.images)  # what went into the codec
  np.testing.assert_array_equal(decoded, lossless.images)
  assert set(perfect) == set(geneval.GENEVAL_CATEGORIES) | {"overall"}
  assert all(v == 1.0 for v in perfect.values()), perfect
  assert all(v == 0.0 for v in lost.values()), lost


def test_report_puts_the_ceiling_beside_each_category(tmp_path):
  gen = {"single_object": 0.25, "colors": 0.5, "overall": 0.375, "prompts": 4,
         "tokenizer_ceiling": {"single_object": 0.5, "colors": 0.75, "overall": 0.625}}
  results = {"understanding": {"pope_overall": 0.7}, "generation": gen,
             "editing": {"overall": 0.0}}
  report.write_markdown(str(tmp_path / "r.md"), results)
  text = (tmp_path / "r.md").read_text()
  assert "| single_object | 0.250 | 0.500 |" in text
  assert "| overall | 0.375 (target 0.60: not met) | 0.625 |" in text


# ------------------------------------------------- counting_reads: can the model read an image?

@pytest.fixture(scope="module")
def job_text(tmp_path_factory):
  """The main job's sentencepiece and formatter (16 read slots per image)."""
  from experiments.tiny import illume_shapes
  from unimodal_jax.data import formatting, text_tokenizer
  from unimodal_jax.data.vocab import Vocab
  from unimodal_jax.pipeline import recipe
  config = illume_shapes.get_config()
  path = str(tmp_path_factory.mktemp("spm") / "spm.model")
  text_tokenizer.train_sentencepiece(recipe._texts_for_tokenizer(config), path,
                                     config.text_vocab_size, model_type=config.text_model_type)
  sp = text_tokenizer.load(path)
  fmt = formatting.Formatter(sp, Vocab.from_sentencepiece(sp, image_codes=2048),
                             formatting.FormatConfig(max_length=160, image_size=32,
                                                     tokens_per_image=16))
  return sp, fmt


def _reader(sp, fmt, answer):
  """answer_logits for counting_reads: reads each row's question back from its tokens and puts
  the largest logit on the count word answer(question, image) returns."""
  def logits(tokens, mask, images):
    out = np.zeros((len(tokens), fmt.vocab.size), np.float32)
    for row, (t, m, ims) in enumerate(zip(np.asarray(tokens), np.asarray(mask),
                                          np.asarray(images))):
      text = sp.decode([int(x) for x, keep in zip(t, m) if keep and x < fmt.vocab.text_size])
      question = text[text.index("How many"):text.index("?") + 1]
      out[row, sp.encode(shapes.NUMBER_WORDS[answer(question, ims[0])])[0]] = 1.0
    return out
  return logits


def _judged(question, image):
  """The count the judge finds of what "How many [color] <shapes> are there?" names."""
  *color, plural = question[len("How many "):-len(" are there?")].split()
  shape = {v: k for k, v in shapes.PLURALS.items()}[plural]
  return sum(o.shape == shape and (not color or o.color == color[0])
             for o in shapes_judge.detect(image))


def test_counting_reads_scores_an_oracle_one_and_a_constant_reader_its_base_rate(job_text):
  sp, fmt = job_text
  prompts = geneval.geneval_prompts(1, 3)
  rng = np.random.default_rng(0)
  images = np.stack([shapes.render(geneval.render_for_spec(p["spec"], rng, 32))
                     for p in prompts])
  oracle = evaluate.counting_reads(_reader(sp, fmt, _judged), fmt, sp, prompts, images, batch=5)
  asked = sum(len(p["spec"]["include"]) for p in prompts)  # every asked object is there
  assert oracle == {"accuracy": 1.0, "asked": asked, "skipped": 0}
  always_one = evaluate.counting_reads(_reader(sp, fmt, lambda q, im: 1), fmt, sp, prompts,
                                       images, batch=5)
  singles = sum(req["count"] == 1 for p in prompts for req in p["spec"]["include"])
  assert always_one["accuracy"] == pytest.approx(singles / asked) and 0 < singles < asked


def test_counting_reads_skips_objects_the_judge_does_not_find(job_text):
  sp, fmt = job_text
  prompts = geneval.geneval_prompts(1, 1)
  blank = np.broadcast_to(np.asarray(shapes.BACKGROUND, np.uint8), (len(prompts), 32, 32, 3))
  result = evaluate.counting_reads(_reader(sp, fmt, _judged), fmt, sp, prompts, blank)
  assert result == {"accuracy": 0.0, "asked": 0,
                    "skipped": sum(len(p["spec"]["include"]) for p in prompts)}


def test_counting_reads_refuses_a_tokenizer_that_splits_the_count_words(job_text):
  sp, fmt = job_text

  class Letters:  # spells every word letter by letter
    def encode(self, text):
      return [ord(c) for c in text]
  assert len(set(evaluate.count_word_pieces(sp))) == 5  # the job's: one piece each
  assert evaluate.count_word_pieces(Letters()) is None  # the evaluation then skips the check
  with pytest.raises(ValueError, match="count words"):
    evaluate.counting_reads(lambda *a: None, fmt, Letters(), geneval.geneval_prompts(1, 1),
                            np.zeros((6, 32, 32, 3), np.uint8))
