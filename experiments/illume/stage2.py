"""ILLUME stage 2 (unified image-text alignment), the LLM part: Vicuna-7B trained at ILLUME
Table 5's stage-2 values (../shared/reference/papers.md): learning rate 5.0e-5, batch 1024,
15,000 steps, sequences of 4,096 tokens, FSDP over a v5p-256 with full remat.

The vision adapter's group (also 5.0e-5) and the image-text data arrive with the ILLUME issue;
until then this config trains the decoder alone and is the memory check of the stage-2 step:

  python tools/aot_compile.py --config=experiments/illume/stage2.py --topology=v5p-256

Expected: the last line is JSON with "fits": true (see the README for the measured bytes).
"""
from experiments.illume import vicuna7b


def get_config(arg=None):
  c = vicuna7b.get_config(arg)
  c.global_batch = 1024  # Table 5, stage 2
  c.seq_len = 4096
  c.data = dict(corpus="stdlib_docstrings", vocab_size=2048, heldout_fraction=0.05, cache_dir="")
  c.train = dict(
      steps=15_000,  # Table 5, stage 2
      seed=0, grad_accum_steps=1, z_loss_weight=0.0,
      log_every=10, eval_every=1000, eval_batches=8,
      checkpoint_every=500, keep_checkpoints=3, async_checkpointing=True,
      max_consecutive_nonfinite=10, init_from="", peak_flops_per_device=0.0)
  c.optimizer = dict(
      learning_rate=5.0e-5,  # Table 5, stage 2: LLM (and adapter) 5.0e-5
      warmup_steps=150, schedule="cosine", end_lr_ratio=0.0,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_grad_norm=1.0,
      groups={})
  return c
