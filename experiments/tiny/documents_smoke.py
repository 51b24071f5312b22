"""The document pipeline feeding the training loop: a micro decoder on the digits world's
captions (a smoke test of data -> loop -> checkpoint; the decoder sees image slots as tokens only
until the ILLUME model adds the vision adapter).

    python -m unimodal_jax.train --config=experiments/tiny/documents_smoke.py --workdir=/tmp/docs

Expected: a few seconds after the tokenizer is trained; results.json reports loss/text and the
pipeline's skip counts (none for this world).
"""
import ml_collections

from experiments.tiny import lm


def get_config(arg=None):
  del arg
  c = lm.get_config("micro")
  c.seq_len = 64
  c.data = ml_collections.ConfigDict(dict(
      kind="documents",
      sources={"digits_captions": {"world": "digits", "task": "caption", "size": 16,
                                   "weight": 1.0}},
      eval_sources={"digits_heldout": {"world": "digits", "task": "caption", "size": 16,
                                       "split": "judge_test"}},
      tokenizer="", vocab_size=300, image_codes=0, cache_dir="",
      format={"image_size": 16, "tokens_per_image": 4, "max_images": 4, "text_dropout": 0.0},
      num_workers=0, strict=False))
  c.model.vocab_size = 307  # 300 text + 7 special tokens
  c.train.update(steps=40, eval_every=20, checkpoint_every=10, log_every=10)
  c.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=3e-3)
  return c
