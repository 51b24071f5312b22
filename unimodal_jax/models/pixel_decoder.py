"""Diffusion pixel decoder: reconstructed semantic features -> pixels (ILLUME renders its
tokenizer's features with a diffusion model; here a small denoiser trained from scratch).

Two denoisers, chosen by `PixelDecoderConfig.architecture`:
  'conv' (default): a residual conv net on the grid of pixel patches, the condition's grid
      upsampled onto it (models/conv_denoiser.py). On the shapes world it is the one that keeps
      shapes: the DiT below, at the same CPU budget, reproduced colors and places but not shapes.
  'dit': a DiT over patchified pixels. The condition (the tokenizer's decoded feature tokens)
      is projected and prepended to the patch tokens (in-context conditioning), the diffusion
      time modulates every block through adaLN-Zero, and only the patch tokens are read out.
Objective: flow matching (rectified flow). With x0 the image in [-1, 1] and noise e,
x_t = (1 - t) x0 + t e and the network predicts the velocity v = e - x0; sampling integrates
dx/dt = v from t = 1 (noise) to t = 0 with Euler steps. Classifier-free guidance: training
replaces the condition by a learned null condition with probability `cond_dropout`; sampling
mixes v = v_null + w (v_cond - v_null).

    decoder = PixelDecoder(config)
    loss = flow_matching_loss(decoder, params, images, cond, rng)
    images = sample(decoder, params, cond, rng, steps=32, guidance=2.0)   # uint8
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models.conv_denoiser import ConvDenoiser
from unimodal_jax.models.denoiser_layers import (  # noqa: F401 (part of this module's API)
    cells_to_patches, condition_or_null, patchify, time_embedding, timestep_embedding,
    unpatchify)
from unimodal_jax.models.pixel_decoder_config import ARCHITECTURES, PixelDecoderConfig  # noqa: F401

def _init(axes, init=nn.initializers.xavier_uniform()):
  return nn.with_logical_partitioning(init, axes)


def sincos_2d(grid: int, dim: int, scale: float = 1.0):
  """[grid * grid, dim] fixed 2-D sine-cosine position features (row-major patches); `scale`
  stretches coordinates so a coarser grid lands on the same frame as a finer one."""
  quarter = dim // 4
  freqs = 1.0 / (10_000.0 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter))
  ys, xs = jnp.meshgrid(jnp.arange(grid, dtype=jnp.float32), jnp.arange(grid, dtype=jnp.float32),
                        indexing="ij")
  ys, xs = (ys.ravel() + 0.5) * scale, (xs.ravel() + 0.5) * scale
  out = jnp.concatenate([jnp.sin(ys[:, None] * freqs), jnp.cos(ys[:, None] * freqs),
                         jnp.sin(xs[:, None] * freqs), jnp.cos(xs[:, None] * freqs)], axis=1)
  return jnp.pad(out, ((0, 0), (0, dim - out.shape[1])))


def _position_init(config: "PixelDecoderConfig"):
  """Learned positions that start at the fixed 2-D sine-cosine table (DiT's choice), with the
  condition tokens placed on the same frame as the patches they describe."""
  def init(key, shape, dtype=jnp.float32):
    del key
    patches = sincos_2d(config.grid, config.hidden_size)
    if config.cond_grid ** 2 == config.cond_tokens:
      cond = sincos_2d(config.cond_grid, config.hidden_size, config.grid / config.cond_grid)
    else:
      cond = jnp.zeros((config.cond_tokens, config.hidden_size))
    return jnp.concatenate([cond, patches]).astype(dtype).reshape(shape)
  return init


class DiTBlock(nn.Module):
  """Pre-norm transformer block whose norms are shifted, scaled and gated by the time
  embedding (adaLN-Zero: the gates start at zero, so every block starts as the identity)."""
  config: PixelDecoderConfig

  @nn.compact
  def __call__(self, x, t_emb):
    cfg = self.config
    mod = nn.Dense(6 * cfg.hidden_size, kernel_init=_init(("embed", "mlp"),
                                                          nn.initializers.zeros_init()),
                   name="adaln")(nn.silu(t_emb))[:, None, :]
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    norm = functools.partial(nn.LayerNorm, use_scale=False, use_bias=False, epsilon=1e-6)
    h = norm()(x) * (1 + scale1) + shift1
    h = nn.MultiHeadDotProductAttention(
        cfg.num_heads, kernel_init=_init(("embed", "heads")), name="attn")(h, h)
    x = x + gate1 * h
    h = norm()(x) * (1 + scale2) + shift2
    h = nn.Dense(cfg.mlp_ratio * cfg.hidden_size, kernel_init=_init(("embed", "mlp")))(h)
    h = nn.Dense(cfg.hidden_size, kernel_init=_init(("mlp", "embed")))(nn.gelu(h))
    return x + gate2 * h


def PixelDecoder(config: PixelDecoderConfig) -> nn.Module:  # noqa: N802 (reads as a class)
  """The denoiser the config names: v(x_t, t | cond) with images [B, H, W, C] in [-1, 1],
  t [B], cond [B, T, cond_dim] or None (the null condition), keyword drop_cond [B] bools."""
  if config.architecture == "conv":
    return ConvDenoiser(config)
  return DiTDenoiser(config)


class DiTDenoiser(nn.Module):
  """Velocity v(x_t, t | cond): images [B, H, W, C] in [-1, 1], t [B], cond [B, T, cond_dim]
  (or None for the null condition)."""
  config: PixelDecoderConfig

  @nn.compact
  def __call__(self, noisy, t, cond, *, drop_cond=None):
    cfg = self.config
    cond = condition_or_null(self, cond, drop_cond, noisy.shape[0])
    c = nn.Dense(cfg.hidden_size, kernel_init=_init(("embed", "mlp")), name="cond_proj")(cond)
    x = nn.Dense(cfg.hidden_size, kernel_init=_init((None, "embed")), name="patch_embed")(
        patchify(noisy, cfg.patch_size))
    if cfg.spatial_cond:  # each patch also gets the condition token of its grid cell
      per_cell = nn.Dense(cfg.hidden_size, kernel_init=_init(("embed", "mlp")),
                          name="cond_spatial")(cond)
      x = x + cells_to_patches(per_cell, cfg.cond_grid, cfg.grid)
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        _position_init(cfg), (None, "embed")),
        (cfg.cond_tokens + cfg.num_patches, cfg.hidden_size))
    h = jnp.concatenate([c, x], axis=1) + pos
    t_emb = time_embedding(t, cfg.hidden_size)
    for i in range(cfg.num_layers):
      h = DiTBlock(cfg, name=f"block_{i}")(h, t_emb)
    h = h[:, cfg.cond_tokens:]
    mod = nn.Dense(2 * cfg.hidden_size, kernel_init=nn.initializers.zeros_init(),
                   name="final_adaln")(nn.silu(t_emb))[:, None, :]
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(h) * (1 + scale) + shift
    out = nn.Dense(cfg.patch_size ** 2 * cfg.channels, kernel_init=nn.initializers.zeros_init(),
                   name="out")(h)
    return unpatchify(out, cfg.patch_size, cfg.image_size, cfg.channels)


def to_unit_range(images_uint8):
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images):
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def flow_matching_loss(decoder: nn.Module, params, images_uint8, cond, rng):
  """Mean squared error of the predicted velocity (e - x0) at a random time, with the
  condition dropped with probability cond_dropout."""
  x0 = to_unit_range(images_uint8)
  t_rng, e_rng, d_rng = jax.random.split(rng, 3)
  b = x0.shape[0]
  t = jax.random.uniform(t_rng, (b,))
  noise = jax.random.normal(e_rng, x0.shape)
  tb = t[:, None, None, None]
  x_t = (1 - tb) * x0 + tb * noise
  drop = jax.random.bernoulli(d_rng, decoder.config.cond_dropout, (b,))
  v = decoder.apply({"params": params}, x_t, t, cond, drop_cond=drop)
  return jnp.mean((v - (noise - x0)) ** 2)


def euler_sample(velocity, noise, steps: int):
  """Integrate dx/dt = velocity(x, t) from t = 1 to t = 0 in `steps` equal Euler steps."""
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def step(x, i):
    t, t_next = ts[i], ts[i + 1]
    v = velocity(x, jnp.full((x.shape[0],), t))
    return x + (t_next - t) * v, None

  x, _ = jax.lax.scan(step, noise, jnp.arange(steps))
  return x


def guided_velocity(decoder: nn.Module, params, cond, guidance: float):
  """v_null + w (v_cond - v_null); w = 1 is the plain conditional model (one pass)."""
  def velocity(x, t):
    if guidance == 1.0:
      return decoder.apply({"params": params}, x, t, cond)
    both = decoder.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                         jnp.concatenate([cond, cond]),
                         drop_cond=jnp.arange(2 * x.shape[0]) >= x.shape[0])
    v_cond, v_null = jnp.split(both, 2)
    return v_null + guidance * (v_cond - v_null)
  return velocity


def sample(decoder: nn.Module, params, cond, rng, *, steps: int = 32, guidance: float = 2.0):
  """Images (uint8 [B, H, W, C]) for conditions cond [B, T, cond_dim]."""
  cfg = decoder.config
  noise = jax.random.normal(rng, (cond.shape[0], cfg.image_size, cfg.image_size, cfg.channels))
  return to_uint8(euler_sample(guided_velocity(decoder, params, cond, guidance), noise, steps))
