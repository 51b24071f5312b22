"""The tokenizer's ceiling on GenEval-style prompts (pipeline/evaluate.generation_ceiling):
scenes drawn to satisfy each prompt, through the codec, judged. Checked with codecs whose
output is known: a lossless one must score 1 in every category, one that loses every object 0."""
import numpy as np

from unimodal_jax.data.worlds import geneval, shapes
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
  perfect = evaluate.generation_ceiling(_RecordingCodec(True), 1, 3, s, log=lambda *a: None)
  lost = evaluate.generation_ceiling(_RecordingCodec(False), 1, 3, s, log=lambda *a: None)
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
