"""DreamLLM through the training loop in seconds: a micro model (2-layer decoder, a small ViT, a
two-level U-Net on 16 px pixels, 4 dream queries) on the shapes world's text-to-image and caption
documents, stage II's groups and loss weights. A smoke test of data -> one forward for both
losses -> checkpoint -> resume (tests/test_dreamllm_training.py); its numbers mean nothing.

    python -m unimodal_jax.train --config=experiments/tiny/dreamllm_smoke.py --workdir=/tmp/dream

Expected: results.json reports loss/lm, loss/diffusion and drawn_images; a killed run resumes
bit-exactly.
"""
import ml_collections

from experiments.dreamllm import stages
from experiments.tiny import lm
from unimodal_jax.data.vocab import SPECIALS

SIZE = 16
QUERIES = 4
TEXT_VOCAB = 300


def get_config(arg=None):
  del arg
  c = lm.get_config("micro")
  llm = c.model.to_dict()
  llm.update(vocab_size=TEXT_VOCAB + len(SPECIALS), max_seq_len=96)
  c.model = ml_collections.ConfigDict(dict(
      kind="dreamllm", llm=llm,
      vision=dict(image_size=SIZE, patch_size=4, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=2),
      unet=dict(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=[16, 32],
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
                num_attention_heads=[2, 2], cross_attention_dim=32, norm_num_groups=8,
                condition_length=QUERIES),
      num_dream_queries=QUERIES, dream_image_size=SIZE, feature_layer=-2))
  c.seq_len = 96
  c.data = ml_collections.ConfigDict(dict(
      kind="documents",
      sources={"t2i": {"world": "shapes", "task": "text_to_image", "size": SIZE, "weight": 1.0},
               "captions": {"world": "shapes", "task": "caption", "size": SIZE, "weight": 1.0}},
      eval_sources={}, tokenizer="", vocab_size=TEXT_VOCAB, image_codes=0, cache_dir="",
      format={"image_size": SIZE, "tokens_per_image": 16, "max_images": 2, "text_dropout": 0.1,
              "dream_queries": QUERIES, "dream_image_size": SIZE, "max_dream_images": 2},
      num_workers=0, strict=False))
  c.train.update(steps=30, eval_every=100, checkpoint_every=10, log_every=10, eval_batches=0,
                 **stages.loss_weights(2))
  c.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=3e-3,
                     groups=stages.optimizer_groups(2, learning_rate=3e-3, vae=False))
  return c
