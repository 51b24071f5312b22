"""Vicuna-7B (LLaMA architecture) with ILLUME's extended vocabulary, at sequence length 4,096.

The LLM of both ILLUME and DreamLLM (../shared/reference/papers.md). Vocabulary: Vicuna's 32,000
text tokens + 16,384 vision codes (ILLUME's codebook) + 7 special tokens (data/vocab.py: image
start and end, image-feature slot, slice separator, and DreamLLM's dream start, end and query
slot) = 48,391. Shape from Vicuna-7B v1.5's config.json.

Check that forward+backward fits a v5p-256 (128 chips) with FSDP, without a TPU:
  python tools/aot_compile.py --config=experiments/illume/vicuna7b.py --topology=v5p-256
Expected: about 7.0B params; the last line is JSON with "fits": true.
"""
import ml_collections

TEXT_VOCAB = 32_000
VISION_CODES = 16_384
SPECIAL_TOKENS = 7  # len(data/vocab.py SPECIALS)


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      vocab_size=TEXT_VOCAB + VISION_CODES + SPECIAL_TOKENS,
      hidden_size=4096,
      intermediate_size=11008,
      num_layers=32,
      num_heads=32,
      num_kv_heads=32,
      head_dim=128,
      rope_theta=10000.0,
      rms_norm_eps=1e-5,
      qkv_bias=False,
      tie_embeddings=False,
      max_seq_len=4096,
      param_dtype="float32",
      dtype="bfloat16",
      logits_dtype="float32",
      scan_layers=True,
      remat_policy="full",
      attention_impl="auto",
      family="llama",
  ))
  # All chips on the FSDP axis: params, grads and optimizer state are split over the whole pod.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.global_batch = 128  # sequences per step for the forward+backward check (one per v5p chip)
  c.seq_len = 4096
  return c
