"""Stable Diffusion's VAE (AutoencoderKL), in NHWC, exact to diffusers.

    vae = VAE(VAEConfig(...))
    mean, logvar = vae.apply({"params": p}, images, method="encode")  # images [B, H, W, 3] in
                                                                      # [-1, 1] -> [B, h, w, 4]
    images = vae.apply({"params": p}, latents, method="decode")       # -> [B, H, W, 3]

The encoder ends in a diagonal Gaussian (mean and log-variance, the latter clipped to [-30, 20]);
diffusion models work on `scaling_factor * latent` (0.18215 for SD 1.x and 2.x): `scale_latents`
and `unscale_latents` do that. `decode` returns the raw decoder output, nominally in [-1, 1] (as
diffusers, unclipped; `to_uint8` clips). Encoder and decoder: a conv in, ResNet blocks with
stride-2 convs (padded right and bottom) down or nearest 2x + conv up, a mid block of ResNet,
single-head attention over the pixels, ResNet; GroupNorm, SiLU, a conv out.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models import diffusion_blocks as blocks
from unimodal_jax.models.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class VAEConfig(ModelConfig):
  KIND = "vae"
  SECTION = "vae"
  sample_size: int = 512  # image height = width (example inputs)
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: tuple = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  param_dtype: str = "float32"
  dtype: str = "float32"
  attention_impl: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    blocks.check_channels("vae", self.block_out_channels, self.norm_num_groups)
    if self.sample_size % self.downsample_factor:
      raise ValueError(f"vae.sample_size={self.sample_size} is not a multiple of "
                       f"{self.downsample_factor}")
    self.check_dtypes()

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def to_dict(self):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in super().to_dict().items()}

  def example_inputs(self) -> tuple:
    return (jax.ShapeDtypeStruct((1, self.sample_size, self.sample_size, self.in_channels),
                                 jnp.float32),)


EPS = 1e-6  # the VAE's GroupNorm epsilon


class _MidBlock(nn.Module):
  """ResNet, attention over pixels (when enabled), ResNet (UNetMidBlock2D without time)."""
  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    channels, groups = cfg.block_out_channels[-1], cfg.norm_num_groups
    x = blocks.ResnetBlock(channels, groups, EPS, **kw, name="resnets_0")(x)
    if cfg.mid_block_add_attention:
      x = blocks.PixelAttention(groups, EPS, cfg.attention_impl, **kw, name="attentions_0")(x)
    return blocks.ResnetBlock(channels, groups, EPS, **kw, name="resnets_1")(x)


class _SampleBlock(nn.Module):
  """`num_layers` ResNet blocks, then a down (encoder) or up (decoder) step if asked."""
  config: VAEConfig
  channels: int
  num_layers: int
  resample: str  # 'down', 'up' or 'none'

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    for j in range(self.num_layers):
      x = blocks.ResnetBlock(self.channels, cfg.norm_num_groups, EPS, **kw, name=f"resnets_{j}")(x)
    if self.resample == "down":
      x = blocks.Downsample(self.channels, 0, **kw, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = blocks.Upsample(self.channels, **kw, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    x = blocks.conv(cfg.block_out_channels[0], 3, name="conv_in", **kw)(x)
    last = len(cfg.block_out_channels) - 1
    for i, channels in enumerate(cfg.block_out_channels):
      x = _SampleBlock(cfg, channels, cfg.layers_per_block, "down" if i < last else "none",
                       name=f"down_blocks_{i}")(x)
    x = _MidBlock(cfg, name="mid_block")(x)
    x = nn.silu(blocks.group_norm(cfg.norm_num_groups, EPS, name="conv_norm_out", **kw)(x))
    return blocks.conv(2 * cfg.latent_channels, 3, name="conv_out", **kw)(x)


class Decoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    x = blocks.conv(cfg.block_out_channels[-1], 3, name="conv_in", **kw)(z)
    x = _MidBlock(cfg, name="mid_block")(x)
    last = len(cfg.block_out_channels) - 1
    for i, channels in enumerate(cfg.block_out_channels[::-1]):
      x = _SampleBlock(cfg, channels, cfg.layers_per_block + 1, "up" if i < last else "none",
                       name=f"up_blocks_{i}")(x)
    x = nn.silu(blocks.group_norm(cfg.norm_num_groups, EPS, name="conv_norm_out", **kw)(x))
    return blocks.conv(cfg.out_channels, 3, name="conv_out", **kw)(x)


class VAE(nn.Module):
  config: VAEConfig

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if cfg.use_quant_conv:
      self.quant_conv = blocks.conv(2 * cfg.latent_channels, 1, **kw)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = blocks.conv(cfg.latent_channels, 1, **kw)

  def encode(self, images):
    """images [B, H, W, C] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]."""
    self._check(images, self.config.in_channels, "images")
    moments = self.encoder(images.astype(self.config.jnp_dtype))
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, latents):
    """latents [B, h, w, latent_channels] (unscaled) -> images [B, h*f, w*f, out_channels]."""
    z = latents.astype(self.config.jnp_dtype)
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, images, rng=None):
    """Reconstruction: the posterior's mean (or a sample, given `rng`), decoded."""
    mean, logvar = self.encode(images)
    z = mean if rng is None else sample_latent(mean, logvar, rng)
    return self.decode(z)

  def _check(self, x, channels, name):
    f = self.config.downsample_factor
    if x.ndim != 4 or x.shape[-1] != channels or x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f"VAE {name}: expected [B, H, W, {channels}] with H and W multiples of "
                       f"{f}; got {x.shape}")


def sample_latent(mean, logvar, rng):
  """A draw from the diagonal Gaussian N(mean, exp(logvar))."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def scale_latents(latents, config: VAEConfig):
  return latents * config.scaling_factor


def unscale_latents(latents, config: VAEConfig):
  return latents / config.scaling_factor


def to_uint8(images):
  """Decoder output in [-1, 1] -> uint8 [0, 255], clipped."""
  return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)
