"""The shape and numerics of a LLaMA/Qwen2-family decoder, as one frozen dataclass.

Configs in `experiments/` hold these values in a `model` ConfigDict; `DecoderConfig.from_dict`
turns that (or a saved `model_config.json`) into this object and names any field it does not know.
"""
from __future__ import annotations

import dataclasses


from unimodal_jax.models.model_config import ModelConfig

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_and_attention")
ATTENTION_IMPLS = ("auto", "xla", "pallas", "blockwise", "cpu_fused")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ModelConfig):
  KIND = "decoder"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int = 0  # 0 means hidden_size // num_heads
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False  # Qwen2 has q/k/v biases; LLaMA has none.
  o_bias: bool = False  # attention output bias: LLaMA with attention_bias=true
  tie_embeddings: bool = False
  max_seq_len: int = 4096
  initializer_range: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype: bfloat16 on accelerators
  logits_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "auto"
  family: str = "llama"  # 'llama' or 'qwen2': decides the Hugging Face export layout

  def __post_init__(self):
    if self.head_dim == 0:
      if self.hidden_size % self.num_heads:
        raise ValueError(
            f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
            f"{self.num_heads}; set model.head_dim explicitly")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_seq_len"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads="
          f"{self.num_kv_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
    self.check_dtypes(("param_dtype", "dtype", "logits_dtype"))
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"model.attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
    if self.family not in ("llama", "qwen2"):
      raise ValueError(f"model.family={self.family!r}; expected 'llama' or 'qwen2'")

  def num_params(self) -> int:
    """Parameter count, from the shapes alone."""
    e, m, h, k, d = (self.hidden_size, self.intermediate_size, self.num_heads,
                     self.num_kv_heads, self.head_dim)
    attn = e * h * d * 2 + e * k * d * 2 + (h * d + 2 * k * d if self.qkv_bias else 0)
    attn += e if self.o_bias else 0
    layer = attn + 3 * e * m + 2 * e
    head = 0 if self.tie_embeddings else e * self.vocab_size
    return self.vocab_size * e + self.num_layers * layer + e + head

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), MaxText's accounting:
    6 x matmul params (embedding lookup excluded) plus the causal attention score/value matmuls."""
    e, m, h, k, d = (self.hidden_size, self.intermediate_size, self.num_heads,
                     self.num_kv_heads, self.head_dim)
    matmul_params = self.num_layers * (e * h * d * 2 + e * k * d * 2 + 3 * e * m)
    matmul_params += e * self.vocab_size
    # q.k and p.v: 2 matmuls x 2 flops x seq x heads x head_dim, halved for the causal mask.
    attention = self.num_layers * 2 * 2 * seq_len * h * d / 2
    return 6 * matmul_params + 3 * attention
