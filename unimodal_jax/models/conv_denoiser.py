"""The pixel decoder's convolutional denoiser (`PixelDecoderConfig.architecture='conv'`).

Everything runs on the grid of pixel patches (space-to-depth by `patch_size`: a 32 px image is
an 8 x 8 grid of 48-value cells), so 3 x 3 convolutions there see 12 x 12 pixels each and the
whole net costs about what a DiT of the same width costs, without attention.

  condition  [B, T, E] tokens = a g x g grid (a ViT's patch features)
             -> Dense -> `cond_blocks` residual blocks on that grid (time-independent)
             -> nearest upsampling onto the patch grid -> 3 x 3 conv
  noisy image -> patches -> Dense, plus the upsampled condition
             -> `num_layers` residual blocks whose norms are scaled and shifted by the diffusion
                time (adaptive GroupNorm, as in ADM's U-Net), their last conv zero-initialized
                so each block starts as the identity
             -> GroupNorm -> SiLU -> Dense (zero-initialized) -> pixels (the velocity)

Why not the DiT: on the shapes world, with the same features and a CPU budget of minutes, a
deterministic regression from the features to pixels through this conv stack already drew
shapes the judge recognises (0.75 of held-out scenes from the encoder's raw features after 1,500
steps) while the DiT's posterior mean given the same features drew blobs (0.03-0.06): local
convolutions place a feature's content where it belongs from the first step.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from unimodal_jax.models import denoiser_layers as layers
from unimodal_jax.models.pixel_decoder_config import PixelDecoderConfig


def _groups(width: int) -> int:
  """GroupNorm groups: 8 when the width allows (32 channels per group at width 256)."""
  for g in (8, 4, 2):
    if width % g == 0:
      return g
  return 1


class ResBlock(nn.Module):
  """x + conv(act(norm(conv(act(norm(x)))))); with `t_emb`, the first norm is modulated by
  scale and shift from the time embedding. The last conv starts at zero (identity block)."""
  width: int

  @nn.compact
  def __call__(self, x, t_emb=None):
    h = nn.GroupNorm(_groups(self.width), epsilon=1e-6)(x)
    if t_emb is not None:
      scale, shift = jnp.split(nn.Dense(2 * self.width, name="time_mod")(nn.silu(t_emb)), 2,
                               axis=-1)
      h = h * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = nn.Conv(self.width, (3, 3), name="conv_0")(nn.silu(h))
    h = nn.silu(nn.GroupNorm(_groups(self.width), epsilon=1e-6)(h))
    return x + nn.Conv(self.width, (3, 3), kernel_init=nn.initializers.zeros_init(),
                       name="conv_1")(h)


class ConvDenoiser(nn.Module):
  """Velocity v(x_t, t | cond): images [B, H, W, C] in [-1, 1], t [B], cond [B, T, cond_dim]
  (or None for the null condition); drop_cond [B] bools pick the null condition per example."""
  config: PixelDecoderConfig

  @nn.compact
  def __call__(self, noisy, t, cond, *, drop_cond=None):
    cfg = self.config
    b, width, g, cg = noisy.shape[0], cfg.hidden_size, cfg.grid, cfg.cond_grid
    cond = layers.condition_or_null(self, cond, drop_cond, b)
    c = nn.Dense(width, name="cond_in")(cond)
    c = c.reshape(b, cg, cg, width)
    for i in range(cfg.cond_blocks):
      c = ResBlock(width, name=f"cond_block_{i}")(c)
    c = layers.cells_to_patches(c.reshape(b, cg * cg, width), cg, g).reshape(b, g, g, width)
    c = nn.Conv(width, (3, 3), name="cond_up")(c)
    x = nn.Dense(width, name="patch_in")(layers.patchify(noisy, cfg.patch_size))
    x = x.reshape(b, g, g, width) + c
    t_emb = layers.time_embedding(t, width)
    for i in range(cfg.num_layers):
      x = ResBlock(width, name=f"block_{i}")(x, t_emb)
    x = nn.silu(nn.GroupNorm(_groups(width), epsilon=1e-6)(x))
    out = nn.Dense(cfg.patch_size ** 2 * cfg.channels, kernel_init=nn.initializers.zeros_init(),
                   name="out")(x)
    return layers.unpatchify(out.reshape(b, g * g, -1), cfg.patch_size, cfg.image_size,
                           cfg.channels)
