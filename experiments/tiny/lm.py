"""A tiny LLaMA-style decoder that runs on a 2-core CPU.

Model summary and a forward pass on random tokens:
  python -m unimodal_jax.summary --config=experiments/tiny/lm.py
Forward+backward compiled for a TPU v5e 2x2 slice, without a TPU:
  python tools/aot_compile.py --config=experiments/tiny/lm.py --topology=v5e:2x2
(The training issue turns this into the tiny LM experiment.)
"""
import ml_collections


def get_config(arg=None):
  del arg
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
  c.global_batch = 8
  c.seq_len = 128
  return c
