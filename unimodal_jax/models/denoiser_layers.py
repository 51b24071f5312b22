"""Pieces both pixel denoisers share (models/pixel_decoder.py's DiT, models/conv_denoiser.py):
the diffusion time's embedding, the classifier-free-guidance null condition, and moving between
images, patch tokens and the condition's coarser grid."""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """Sinusoidal features of t in [0, 1] (scaled to [0, 1000] like DDPM timesteps)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t.astype(jnp.float32) * 1000.0)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def cells_to_patches(cells, cond_grid: int, grid: int):
  """[B, cond_grid**2, E] (row-major cells) -> [B, grid**2, E] (row-major patches): every patch
  gets the vector of the cell that covers it (nearest-neighbour upsampling)."""
  b, _, e = cells.shape
  k = grid // cond_grid
  x = cells.reshape(b, cond_grid, 1, cond_grid, 1, e)
  return jnp.broadcast_to(x, (b, cond_grid, k, cond_grid, k, e)).reshape(b, grid * grid, e)


def patchify(images, p: int):
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens, p: int, size: int, channels: int):
  b, n = tokens.shape[:2]
  g = size // p
  x = tokens.reshape(b, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, size, size, channels)


def condition_or_null(module: nn.Module, cond, drop_cond, batch: int):
  """The condition with the learned null condition (param 'null_cond') in place of it where
  drop_cond [B] is true, or everywhere when cond is None (classifier-free guidance)."""
  cfg = module.config
  null = module.param("null_cond", nn.with_logical_partitioning(
      nn.initializers.normal(0.02), (None, "embed")), (cfg.cond_tokens, cfg.cond_dim))
  null = jnp.broadcast_to(null, (batch,) + null.shape)
  if cond is None:
    return null
  if drop_cond is not None:
    return jnp.where(drop_cond[:, None, None], null, cond)
  return cond


def time_embedding(t, width: int):
  """The diffusion time as a [B, width] vector: sinusoidal features through a 2-layer MLP
  (called inside a compact module; its Dense layers are named time_mlp_0/1)."""
  t_emb = nn.Dense(width, name="time_mlp_0")(timestep_embedding(t, width))
  return nn.Dense(width, name="time_mlp_1")(nn.silu(t_emb))
