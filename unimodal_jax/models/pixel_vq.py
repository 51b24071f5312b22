"""The baseline for ILLUME Fig. 6: a pixel-reconstruction VQ tokenizer (conv encoder ->
quantizer -> conv decoder, trained on pixels), against which the semantic tokenizer makes
MLLM pretraining converge faster.

    model = PixelVQTokenizer(config)
    recon, ids, aux = model.apply(variables, images_unit_range, train=True, mutable=['vq_stats'])
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models.model_config import ModelConfig
from unimodal_jax.models.quantizer import QuantizerConfig, VectorQuantizer


@dataclasses.dataclass(frozen=True)
class PixelVQConfig(ModelConfig):
  KIND = "pixel_vq"
  SECTION = "baseline"
  image_size: int = 32
  channels: int = 3
  width: int = 64
  downsample: int = 2  # stride-2 stages: tokens per side = image_size / 2**downsample
  codebook_size: int = 1024
  code_dim: int = 32
  quantizer: dict = dataclasses.field(default_factory=dict)

  def example_inputs(self) -> tuple:
    """Images in [-1, 1]."""
    return (jax.ShapeDtypeStruct((1, self.image_size, self.image_size, self.channels),
                                 jnp.float32),)

  @property
  def num_tokens(self) -> int:
    return (self.image_size // 2 ** self.downsample) ** 2


class _ResBlock(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.width, (3, 3))(nn.swish(nn.GroupNorm(num_groups=8)(x)))
    h = nn.Conv(self.width, (3, 3))(nn.swish(nn.GroupNorm(num_groups=8)(h)))
    return x + h


class ConvEncoder(nn.Module):
  """images [B, H, W, C] -> latent vectors [B, tokens, code_dim]."""
  config: PixelVQConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    x = nn.Conv(cfg.width, (3, 3))(images)
    for _ in range(cfg.downsample):
      x = _ResBlock(cfg.width)(x)
      x = nn.Conv(cfg.width, (4, 4), strides=(2, 2))(x)
    x = _ResBlock(cfg.width)(x)
    x = nn.Dense(cfg.code_dim)(x)
    return x.reshape(x.shape[0], -1, cfg.code_dim)


class ConvDecoder(nn.Module):
  """code vectors [B, tokens, code_dim] -> images [B, H, W, C]."""
  config: PixelVQConfig

  @nn.compact
  def __call__(self, codes):
    cfg = self.config
    side = cfg.image_size // 2 ** cfg.downsample
    x = nn.Dense(cfg.width)(codes).reshape(codes.shape[0], side, side, cfg.width)
    x = _ResBlock(cfg.width)(x)
    for _ in range(cfg.downsample):
      x = nn.ConvTranspose(cfg.width, (4, 4), strides=(2, 2))(x)
      x = _ResBlock(cfg.width)(x)
    return nn.Conv(cfg.channels, (3, 3))(nn.swish(nn.GroupNorm(num_groups=8)(x)))


class PixelVQTokenizer(nn.Module):
  config: PixelVQConfig

  def setup(self):
    cfg = self.config
    self.encoder = ConvEncoder(cfg)
    self.quantizer = VectorQuantizer(QuantizerConfig(codebook_size=cfg.codebook_size,
                                                     dim=cfg.code_dim, **cfg.quantizer))
    self.decoder = ConvDecoder(cfg)

  def __call__(self, images, *, train: bool = False):
    """images in [-1, 1] -> (reconstruction, ids [B, tokens], quantizer aux)."""
    quantized, ids, aux = self.quantizer(self.encoder(images), train=train)
    return self.decoder(quantized), ids, aux

  def encode(self, images):
    return self.quantizer(self.encoder(images), train=False)[1]

  def decode(self, ids):
    return self.decoder(self.quantizer.lookup(ids))


def pixel_loss(recon, images) -> dict:
  l1 = jnp.abs(recon - images).mean()
  l2 = jnp.square(recon - images).mean()
  return {"loss": l1 + l2, "l1": l1, "l2": l2}
