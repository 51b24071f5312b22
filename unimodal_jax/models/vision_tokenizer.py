"""ILLUME's semantic vision tokenizer: a vision encoder's features -> projection -> vector
quantizer -> transformer feature decoder, trained to reconstruct the *features* (smooth-L1 +
cosine), not the pixels. Pixels come from the diffusion pixel decoder conditioned on the
reconstructed features (pixel_decoder.py).

The encoder runs outside this module (frozen or trained by the caller): this module maps its
feature tokens [B, N, feature_dim] to ids [B, N] and back.

    tok = SemanticTokenizer(config)
    recon, ids, aux = tok.apply(variables, features, train=True, mutable=['vq_stats'])
    ids = tok.apply(variables, features, method=SemanticTokenizer.encode)
    features = tok.apply(variables, ids, method=SemanticTokenizer.decode_features)
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unimodal_jax.models.model_config import ModelConfig
from unimodal_jax.models.quantizer import QuantizerConfig, VectorQuantizer


@dataclasses.dataclass(frozen=True)
class SemanticTokenizerConfig(ModelConfig):
  KIND = "semantic_tokenizer"
  SECTION = "tokenizer"
  feature_dim: int  # the encoder's feature width: input and reconstruction target
  num_tokens: int  # feature tokens (= image tokens) per image
  # The encoder's hidden state it quantizes (vit.VitOutput.layer: 0 the patch embeddings, -1
  # the last layer's output)
  encoder_layer: int = -1
  codebook_size: int = 1024
  code_dim: int = 32
  decoder_hidden: int = 128
  decoder_layers: int = 2
  decoder_heads: int = 4
  smooth_l1_weight: float = 1.0
  cosine_weight: float = 1.0
  quantizer: dict = dataclasses.field(default_factory=dict)  # other QuantizerConfig fields

  def example_inputs(self) -> tuple:
    return (jax.ShapeDtypeStruct((1, self.num_tokens, self.feature_dim), jnp.float32),)

  def quantizer_config(self) -> QuantizerConfig:
    return QuantizerConfig(codebook_size=self.codebook_size, dim=self.code_dim,
                           **self.quantizer)


class _Block(nn.Module):
  hidden: int
  heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(self.heads)(h, h)
    h = nn.Dense(4 * self.hidden)(nn.LayerNorm()(x))
    return x + nn.Dense(self.hidden)(nn.gelu(h))


class FeatureDecoder(nn.Module):
  """Code vectors [B, N, code_dim] -> reconstructed features [B, N, feature_dim]."""
  config: SemanticTokenizerConfig

  @nn.compact
  def __call__(self, codes):
    cfg = self.config
    x = nn.Dense(cfg.decoder_hidden, name="in_proj")(codes)
    x = x + self.param("pos_embed", nn.initializers.normal(0.02),
                       (cfg.num_tokens, cfg.decoder_hidden))
    for i in range(cfg.decoder_layers):
      x = _Block(cfg.decoder_hidden, cfg.decoder_heads, name=f"block_{i}")(x)
    return nn.Dense(cfg.feature_dim, name="out_proj")(nn.LayerNorm()(x))


class SemanticTokenizer(nn.Module):
  config: SemanticTokenizerConfig

  def setup(self):
    cfg = self.config
    self.in_proj = nn.Dense(cfg.code_dim)
    self.quantizer = VectorQuantizer(cfg.quantizer_config())
    self.decoder = FeatureDecoder(cfg)

  def __call__(self, features, *, train: bool = False):
    """(reconstructed features, ids [B, N], quantizer aux: losses and usage metrics)."""
    quantized, ids, aux = self.quantizer(self.in_proj(features), train=train)
    return self.decoder(quantized), ids, aux

  def encode(self, features):
    return self.quantizer(self.in_proj(features), train=False)[1]

  def decode_features(self, ids):
    return self.decoder(self.quantizer.lookup(ids))


def feature_reconstruction_loss(recon, target, config: SemanticTokenizerConfig) -> dict:
  """ILLUME's objective on features: smooth-L1 (Huber with delta 1) + (1 - cosine similarity)."""
  recon = recon.astype(jnp.float32)
  target = target.astype(jnp.float32)
  smooth_l1 = optax.huber_loss(recon, target, delta=1.0).mean()
  cosine = optax.cosine_similarity(recon, target, epsilon=1e-8).mean()
  total = config.smooth_l1_weight * smooth_l1 + config.cosine_weight * (1.0 - cosine)
  return {"loss": total, "smooth_l1": smooth_l1, "cosine": cosine}
