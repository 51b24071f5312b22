"""The layers Stable Diffusion's U-Net and VAE are built from, in NHWC, exact to diffusers.

ResNet blocks (GroupNorm, SiLU, 3x3 convs, an optional timestep-embedding shift), strided-conv
down- and nearest-neighbour up-sampling, the spatial transformer (GroupNorm, a conv or linear
projection in and out, blocks of self-attention, cross-attention to a condition sequence and a
GEGLU feed-forward) and the VAE's single-head attention over pixels.

Submodules carry diffusers' names ("resnets_0" for `resnets.0`, "to_out_0" for `to_out.0`), so a
diffusers state dict maps onto these params by renaming alone (`hf_diffusers.py`). Every
parameter carries logical axis names (`sharding.LOGICAL_AXIS_RULES`): input channels on 'embed',
output channels on 'mlp' (attention projections on 'heads'), kernel windows replicated.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models import matmul_grad_conv

from unimodal_jax.models.attention import full_attention

CONV_AXES = ("conv_height", "conv_width", "embed", "mlp")
ACT_IMAGE = ("act_batch", "act_height", "act_width", "act_embed")  # [B, H, W, C]


def _kernel(axes, init=nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def conv(features, kernel_size=3, *, name=None, dtype, param_dtype, strides=1, padding=None):
  """nn.Conv with the project's axes, named as diffusers names it (no wrapper level); its kernel
  gradient as the enclosing model chose (models/matmul_grad_conv.py)."""
  k = kernel_size
  pad = padding if padding is not None else [(k // 2, k // 2)] * 2
  return nn.Conv(features, (k, k), strides=(strides, strides), padding=pad, dtype=dtype,
                 param_dtype=param_dtype, kernel_init=_kernel(CONV_AXES),
                 bias_init=_zeros(("mlp",)), name=name,
                 conv_general_dilated=matmul_grad_conv.selected())


def dense(features, *, name, dtype, param_dtype, use_bias=True, axes=("embed", "mlp")):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_kernel(axes), bias_init=_zeros(axes[-1:]), name=name)


def group_norm(groups, eps, *, name, dtype, param_dtype):
  # use_fast_variance=False: E[(x - mean)^2], as torch computes it (E[x^2] - mean^2 loses digits
  # on activations with a large mean).
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, scale_init=_ones(("norm",)),
                      bias_init=_zeros(("norm",)), name=name)


def layer_norm(eps, *, name, dtype, param_dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                      scale_init=_ones(("norm",)), bias_init=_zeros(("norm",)), name=name)


def timestep_embedding(timesteps, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10_000.0):
  """[B] timesteps (int or float) -> [B, dim] sinusoidal features, diffusers' `Timesteps`:
  frequencies exp(-log(max_period) i / (dim/2 - freq_shift)); [cos, sin] when flipped."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, the timestep embedding added between (when given), and a 1x1
  conv shortcut when the channel count changes (diffusers' ResnetBlock2D, 'default' shift)."""
  out_channels: int
  groups: int
  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.silu(group_norm(self.groups, self.eps, name="norm1", **kw)(x))
    h = conv(self.out_channels, 3, name="conv1", **kw)(h)
    if temb is not None:
      h = h + dense(self.out_channels, name="time_emb_proj", **kw)(nn.silu(temb))[:, None, None]
    h = nn.silu(group_norm(self.groups, self.eps, name="norm2", **kw)(h))
    h = conv(self.out_channels, 3, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, name="conv_shortcut", **kw)(x)
    return nn.with_logical_constraint(x + h, ACT_IMAGE)


class Downsample(nn.Module):
  """A stride-2 3x3 conv. padding=1 (the U-Net) pads one pixel each side; padding=0 (the VAE's
  encoder) pads one pixel right and bottom only, as diffusers does."""
  channels: int
  padding: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = [(1, 1), (1, 1)] if self.padding == 1 else [(0, 1), (0, 1)]
    return conv(self.channels, 3, strides=2, padding=pad, name="conv", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x, then a 3x3 conv."""
  channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(self.channels, 3, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Attention(nn.Module):
  """Multi-head attention of [B, L, C] queries over a context [B, S, Cc] (itself when None):
  to_q/to_k/to_v (biases per `bias`), then to_out_0 (with bias), diffusers' `Attention`."""
  heads: int
  head_dim: int
  bias: bool = False
  upcast: bool = False
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.bias,
              axes=("embed", "heads"))
    context = x if context is None else context
    inner = self.heads * self.head_dim
    split = lambda t: t.reshape(*t.shape[:2], self.heads, self.head_dim)
    q = split(dense(inner, name="to_q", **kw)(x))
    k = split(dense(inner, name="to_k", **kw)(context))
    v = split(dense(inner, name="to_v", **kw)(context))
    out = full_attention(q, k, v, impl=self.impl, upcast=self.upcast)
    out = out.reshape(*out.shape[:2], inner)
    return dense(x.shape[-1], name="to_out_0", dtype=self.dtype, param_dtype=self.param_dtype,
                 axes=("heads", "embed"))(out)


class FeedForward(nn.Module):
  """GEGLU: a projection to 2 x 4C split into value and gate, value * gelu(gate) (exact erf),
  back to C (diffusers' FeedForward with activation 'geglu': ff.net.0.proj, ff.net.2)."""
  mult: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = x.shape[-1] * self.mult
    value, gate = jnp.split(GegluProjection(2 * inner, **kw, name="net_0")(x), 2, axis=-1)
    return dense(x.shape[-1], name="net_2", axes=("mlp", "embed"), **kw)(
        value * nn.gelu(gate, approximate=False))


class GegluProjection(nn.Module):
  """The `net.0` level of diffusers' GEGLU (it holds `proj`)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return dense(self.features, name="proj", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, cross-attention to the condition, GEGLU feed-forward, each
  residual (diffusers' BasicTransformerBlock, norm_type 'layer_norm')."""
  heads: int
  head_dim: int
  upcast: bool = False
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(heads=self.heads, head_dim=self.head_dim, upcast=self.upcast, impl=self.impl, **kw)
    x = x + Attention(name="attn1", **attn)(layer_norm(1e-5, name="norm1", **kw)(x))
    x = x + Attention(name="attn2", **attn)(layer_norm(1e-5, name="norm2", **kw)(x), context)
    return x + FeedForward(name="ff", **kw)(layer_norm(1e-5, name="norm3", **kw)(x))


class SpatialTransformer(nn.Module):
  """GroupNorm (eps 1e-6), projection in (1x1 conv, or linear after flattening: SD 2.x), the
  transformer blocks over the H*W pixels, projection out, plus the input (Transformer2DModel)."""
  heads: int
  head_dim: int
  groups: int
  num_layers: int = 1
  linear_projection: bool = False
  upcast: bool = False
  impl: str = "auto"
  remat_policy: Any = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, height, width, channels = x.shape
    inner = self.heads * self.head_dim
    h = group_norm(self.groups, 1e-6, name="norm", **kw)(x)
    if self.linear_projection:
      h = dense(inner, name="proj_in", **kw)(h.reshape(b, height * width, channels))
    else:
      h = conv(inner, 1, name="proj_in", **kw)(h).reshape(b, height * width, inner)
    block_cls = TransformerBlock
    if self.remat_policy is not None:
      block_cls = nn.remat(TransformerBlock, policy=self.remat_policy)
    for i in range(self.num_layers):
      h = block_cls(self.heads, self.head_dim, self.upcast, self.impl, **kw,
                    name=f"transformer_blocks_{i}")(h, context)
    if self.linear_projection:
      h = dense(channels, name="proj_out", **kw)(h).reshape(b, height, width, channels)
    else:
      h = conv(channels, 1, name="proj_out", **kw)(h.reshape(b, height, width, inner))
    return nn.with_logical_constraint(h + x, ACT_IMAGE)


class PixelAttention(nn.Module):
  """The VAE's mid-block attention: GroupNorm, one head over the H*W pixels with biased q/k/v,
  the output projection, plus the input (diffusers' Attention with residual_connection)."""
  groups: int
  eps: float
  impl: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, height, width, channels = x.shape
    h = group_norm(self.groups, self.eps, name="group_norm", dtype=self.dtype,
                   param_dtype=self.param_dtype)(x).reshape(b, height * width, channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=True, axes=("embed", "heads"))
    split = lambda t: t[:, :, None, :]
    q, k, v = (split(dense(channels, name=n, **kw)(h)) for n in ("to_q", "to_k", "to_v"))
    out = full_attention(q, k, v, impl=self.impl, upcast=True)[:, :, 0]
    out = dense(channels, name="to_out_0", dtype=self.dtype, param_dtype=self.param_dtype,
                axes=("heads", "embed"))(out)
    return out.reshape(b, height, width, channels) + x


def check_channels(name: str, channels: Sequence[int], groups: int) -> None:
  """GroupNorm needs every block's channel count to divide into its groups."""
  for c in channels:
    if c % groups:
      raise ValueError(f"{name}: block channels {tuple(channels)} must be multiples of "
                       f"norm_num_groups={groups} ({c} is not)")


def remat(policy_name: str):
  """The jax.checkpoint policy of a policy name, None for 'none' (the decoder's names)."""
  if policy_name == "none":
    return None
  from unimodal_jax.models.decoder import remat_policy
  return remat_policy(policy_name)
