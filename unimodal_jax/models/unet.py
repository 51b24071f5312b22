"""The conditional U-Net of Stable Diffusion 1.x and 2.x, in NHWC, exact to diffusers'
`UNet2DConditionModel` with those configurations.

DreamLLM draws with a frozen SD-2.1-base U-Net conditioned on its dream queries' states; ILLUME's
paper-scale tokenizer renders its semantic features with an SD-shaped U-Net. Layout:

    conv_in -> down blocks (ResNet blocks [+ spatial transformers], a stride-2 conv between)
            -> mid block (ResNet, transformer, ResNet)
            -> up blocks (ResNet blocks on [x, skip] [+ transformers], nearest 2x + conv between)
            -> GroupNorm, SiLU, conv_out
    the timestep's sinusoidal features -> linear, SiLU, linear -> every ResNet block

    model = UNet(UNetConfig(...))
    eps = model.apply({"params": params}, sample, timesteps, condition)
    # sample [B, H, W, C], timesteps [B], condition [B, S, cross_attention_dim] -> [B, H, W, C]

`num_attention_heads` is heads per block (diffusers' config calls it `attention_head_dim`, a
naming slip they keep for compatibility; `hf_diffusers.py` translates). SD 1.x: 8 heads in every
block, conv projections; SD 2.x: heads per block (64-wide heads), linear projections, upcast
attention in 2.1-v. H and W must be multiples of 2^(number of down blocks - 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models import diffusion_blocks as blocks
from unimodal_jax.models import matmul_grad_conv
from unimodal_jax.models.model_config import ModelConfig

DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
ATTENTION_IMPLS = ("auto", "xla", "pallas")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_and_attention")


@dataclasses.dataclass(frozen=True)
class UNetConfig(ModelConfig):
  KIND = "unet"
  SECTION = "unet"
  sample_size: int = 64  # latent height = width (example inputs, AOT shapes)
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple = (320, 640, 1280, 1280)
  down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  layers_per_block: int = 2
  num_attention_heads: tuple = (5, 10, 20, 20)  # per block (diffusers: `attention_head_dim`)
  transformer_layers_per_block: int = 1
  cross_attention_dim: int = 1024
  condition_length: int = 77  # the condition's length in example inputs (any length works)
  use_linear_projection: bool = True  # SD 2.x; SD 1.x projects with 1x1 convs
  upcast_attention: bool = False
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  param_dtype: str = "float32"
  dtype: str = "float32"
  attention_impl: str = "auto"
  remat_policy: str = "none"  # per ResNet block and transformer block
  # How convolutions' kernel gradients are computed: "xla", or "matmul_grad" (an im2col matmul,
  # about 4x faster training on XLA:CPU; models/matmul_grad_conv.py). Same values.
  conv_impl: str = "xla"

  def __post_init__(self):
    for name in ("block_out_channels", "down_block_types", "up_block_types",
                 "num_attention_heads"):
      value = getattr(self, name)
      value = (value,) * len(self.block_out_channels) if isinstance(value, int) else tuple(value)
      object.__setattr__(self, name, value)
    n = len(self.block_out_channels)
    for name in ("down_block_types", "up_block_types", "num_attention_heads"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"unet.{name} has {len(getattr(self, name))} entries; "
                         f"block_out_channels has {n}")
    for name, allowed in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
      bad = [t for t in getattr(self, name) if t not in allowed]
      if bad:
        raise ValueError(f"unet.{name}: {bad[0]!r} is not supported; expected {allowed}")
    for c, h in zip(self.block_out_channels, self.num_attention_heads):
      if c % h:
        raise ValueError(f"unet: block channels {c} not divisible by its {h} attention heads")
    blocks.check_channels("unet", self.block_out_channels, self.norm_num_groups)
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unet.attention_impl={self.attention_impl!r}; expected one of "
                       f"{ATTENTION_IMPLS}")
    if self.conv_impl not in matmul_grad_conv.CONV_IMPLS:
      raise ValueError(f"unet.conv_impl={self.conv_impl!r}; expected one of "
                       f"{matmul_grad_conv.CONV_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"unet.remat_policy={self.remat_policy!r}; expected one of "
                       f"{REMAT_POLICIES}")
    if self.sample_size % self.downsample_factor:
      raise ValueError(f"unet.sample_size={self.sample_size} is not a multiple of "
                       f"{self.downsample_factor} (2^(down blocks - 1))")
    self.check_dtypes()

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  def to_dict(self):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in super().to_dict().items()}

  def example_inputs(self) -> tuple:
    return (jax.ShapeDtypeStruct((1, self.sample_size, self.sample_size, self.in_channels),
                                 jnp.float32),
            jax.ShapeDtypeStruct((1,), jnp.int32),
            jax.ShapeDtypeStruct((1, self.condition_length, self.cross_attention_dim),
                                 jnp.float32))


class TimeEmbedding(nn.Module):
  """linear_1, SiLU, linear_2 on the timestep's sinusoidal features (TimestepEmbedding)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = nn.silu(blocks.dense(self.features, name="linear_1", **kw)(t))
    return blocks.dense(self.features, name="linear_2", **kw)(t)


class _Parts:
  """The builders every block uses, from the config (one place for dtypes, remat, heads)."""

  def __init__(self, cfg: UNetConfig):
    self.cfg = cfg
    self.kw = dict(dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    self.policy = blocks.remat(cfg.remat_policy)
    self.resnet_cls = (blocks.ResnetBlock if self.policy is None
                       else nn.remat(blocks.ResnetBlock, policy=self.policy))

  def resnet(self, channels, name):
    return self.resnet_cls(channels, self.cfg.norm_num_groups, self.cfg.norm_eps, **self.kw,
                           name=name)

  def transformer(self, channels, heads, name):
    cfg = self.cfg
    return blocks.SpatialTransformer(
        heads, channels // heads, cfg.norm_num_groups, cfg.transformer_layers_per_block,
        cfg.use_linear_projection, cfg.upcast_attention, cfg.attention_impl, self.policy,
        **self.kw, name=name)


class DownBlock(nn.Module):
  """ResNet blocks (each followed by a transformer when `cross_attention`), then a stride-2 conv
  unless last; returns the output and the skips it leaves for the up path."""
  config: UNetConfig
  channels: int
  heads: int
  cross_attention: bool
  downsample: bool

  @nn.compact
  def __call__(self, x, temb, condition):
    parts = _Parts(self.config)
    skips = []
    for j in range(self.config.layers_per_block):
      x = parts.resnet(self.channels, f"resnets_{j}")(x, temb)
      if self.cross_attention:
        x = parts.transformer(self.channels, self.heads, f"attentions_{j}")(x, condition)
      skips.append(x)
    if self.downsample:
      x = blocks.Downsample(self.channels, 1, **parts.kw, name="downsamplers_0")(x)
      skips.append(x)
    return x, skips


class MidBlock(nn.Module):
  """ResNet, transformer, ResNet (UNetMidBlock2DCrossAttn)."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x, temb, condition):
    parts, cfg = _Parts(self.config), self.config
    channels, heads = cfg.block_out_channels[-1], cfg.num_attention_heads[-1]
    x = parts.resnet(channels, "resnets_0")(x, temb)
    x = parts.transformer(channels, heads, "attentions_0")(x, condition)
    return parts.resnet(channels, "resnets_1")(x, temb)


class UpBlock(nn.Module):
  """layers_per_block + 1 ResNet blocks, each on [x, the matching skip] (each followed by a
  transformer when `cross_attention`), then nearest 2x + conv unless last."""
  config: UNetConfig
  channels: int
  heads: int
  cross_attention: bool
  upsample: bool

  @nn.compact
  def __call__(self, x, skips, temb, condition):
    parts = _Parts(self.config)
    for j, skip in enumerate(skips):
      x = jnp.concatenate([x, skip], axis=-1)
      x = parts.resnet(self.channels, f"resnets_{j}")(x, temb)
      if self.cross_attention:
        x = parts.transformer(self.channels, self.heads, f"attentions_{j}")(x, condition)
    if self.upsample:
      x = blocks.Upsample(self.channels, **parts.kw, name="upsamplers_0")(x)
    return x


class UNet(nn.Module):
  config: UNetConfig

  @nn.compact
  def __call__(self, sample, timesteps, condition):
    cfg = self.config
    b, height, width, _ = sample.shape
    if height % cfg.downsample_factor or width % cfg.downsample_factor:
      raise ValueError(f"U-Net sample {height}x{width}: height and width must be multiples of "
                       f"{cfg.downsample_factor}")
    if condition.shape[-1] != cfg.cross_attention_dim:
      raise ValueError(f"U-Net condition width {condition.shape[-1]} != "
                       f"unet.cross_attention_dim={cfg.cross_attention_dim}")
    with matmul_grad_conv.kernel_gradient(cfg.conv_impl):  # how every conv's gradient runs
      parts = _Parts(cfg)
      dtype = cfg.jnp_dtype
      timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
      # The timestep's sinusoidal features in float32, then the MLP in the compute dtype.
      t = blocks.timestep_embedding(timesteps, cfg.block_out_channels[0],
                                    flip_sin_to_cos=cfg.flip_sin_to_cos,
                                    freq_shift=cfg.freq_shift)
      temb = TimeEmbedding(cfg.time_embed_dim, **parts.kw,
                           name="time_embedding")(t.astype(dtype))
      condition = condition.astype(dtype)

      x = blocks.conv(cfg.block_out_channels[0], 3, name="conv_in",
                      **parts.kw)(sample.astype(dtype))
      skips = [x]
      last = len(cfg.block_out_channels) - 1
      for i, (channels, kind) in enumerate(zip(cfg.block_out_channels, cfg.down_block_types)):
        x, block_skips = DownBlock(cfg, channels, cfg.num_attention_heads[i],
                                   kind == "CrossAttnDownBlock2D", i < last,
                                   name=f"down_blocks_{i}")(x, temb, condition)
        skips += block_skips
      x = MidBlock(cfg, name="mid_block")(x, temb, condition)
      up_channels = cfg.block_out_channels[::-1]
      up_heads = cfg.num_attention_heads[::-1]
      per_block = cfg.layers_per_block + 1
      for i, (channels, kind) in enumerate(zip(up_channels, cfg.up_block_types)):
        block_skips, skips = skips[-per_block:][::-1], skips[:-per_block]
        x = UpBlock(cfg, channels, up_heads[i], kind == "CrossAttnUpBlock2D", i < last,
                    name=f"up_blocks_{i}")(x, block_skips, temb, condition)
      x = nn.silu(blocks.group_norm(cfg.norm_num_groups, cfg.norm_eps, name="conv_norm_out",
                                    **parts.kw)(x))
      return blocks.conv(cfg.out_channels, 3, name="conv_out", **parts.kw)(x)
