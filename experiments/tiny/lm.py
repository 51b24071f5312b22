"""A tiny LLaMA-style LM on the Python standard library's docstrings, trained on a 2-core CPU.

    python -m unimodal_jax.train --config=experiments/tiny/lm.py --workdir=/tmp/tiny_lm

Trains a 2,048-token sentencepiece model on the docstrings (text that ships with Python), packs
them into 128-token rows, and trains a 1.3M-parameter decoder for 300 steps of 16 x 128 tokens.
Expected (2 CPU cores, about 100 s including tokenizer training and compilation): held-out
loss about 4.7 nats/token against a unigram baseline of 6.09 on the same held-out tokens; see
DIR/results.json (`eval.loss`, `unigram_heldout_loss`).

`--config=experiments/tiny/lm.py:micro` is a smaller variant for tests and smoke runs (a few
seconds: 2 layers of width 64, 512-token vocabulary, 8 x 32 tokens per step).

Also: model summary `python -m unimodal_jax.summary --config=experiments/tiny/lm.py`;
TPU compile check `python tools/aot_compile.py --config=experiments/tiny/lm.py --topology=v5e:2x2`.
"""
import ml_collections


def get_config(arg=None):
  if arg not in (None, "", "micro"):
    raise ValueError(f"experiments/tiny/lm.py: unknown variant {arg!r} (use 'micro' or nothing)")
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=2048,
      hidden_size=128,
      intermediate_size=352,
      num_layers=4,
      num_heads=8,
      num_kv_heads=4,
      head_dim=16,
      rope_theta=10000.0,
      rms_norm_eps=1e-6,
      qkv_bias=False,
      o_bias=False,
      tie_embeddings=False,
      max_seq_len=256,
      param_dtype="float32",
      dtype="float32",
      logits_dtype="float32",
      scan_layers=False,
      remat_policy="none",
      attention_impl="auto",
      family="llama",
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.global_batch = 16
  c.seq_len = 128
  c.data = ml_collections.ConfigDict(dict(
      corpus="stdlib_docstrings", vocab_size=2048, heldout_fraction=0.05,
      cache_dir=""))  # "" = WORKDIR/data
  c.train = ml_collections.ConfigDict(dict(
      steps=300, seed=0, grad_accum_steps=1, z_loss_weight=0.0,
      log_every=20, eval_every=100, eval_batches=8,
      checkpoint_every=100, keep_checkpoints=2, async_checkpointing=True,
      max_consecutive_nonfinite=5, init_from="", peak_flops_per_device=0.0))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=30, schedule="cosine", end_lr_ratio=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_grad_norm=1.0,
      groups=ml_collections.ConfigDict()))
  if arg == "micro":
    c.model.update(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, max_seq_len=64)
    c.data.vocab_size = 512
    c.global_batch, c.seq_len = 8, 32
    c.train.update(steps=200, log_every=10, eval_every=100, eval_batches=4,
                   checkpoint_every=20, keep_checkpoints=3)
    c.optimizer.update(learning_rate=1e-2, warmup_steps=10)
  return c
