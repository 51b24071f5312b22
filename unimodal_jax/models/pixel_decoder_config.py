"""The shape of the diffusion pixel decoder (models/pixel_decoder.py), as one frozen dataclass;
its own file so that both denoisers can import it without importing each other."""
from __future__ import annotations

import dataclasses
import math

from unimodal_jax.models.model_config import ModelConfig

ARCHITECTURES = ("conv", "dit")


@dataclasses.dataclass(frozen=True)
class PixelDecoderConfig(ModelConfig):
  KIND = "pixel_decoder"
  SECTION = "pixel_decoder"
  architecture: str = "conv"  # see the module docstring
  image_size: int = 32
  patch_size: int = 4
  channels: int = 3
  hidden_size: int = 128  # transformer width ('dit') or channels ('conv')
  num_layers: int = 4  # transformer blocks ('dit') or residual blocks on the patch grid ('conv')
  num_heads: int = 4  # 'dit' only
  cond_blocks: int = 2  # 'conv' only: residual blocks on the condition's own grid
  mlp_ratio: int = 4
  cond_dim: int = 64  # width of the condition tokens (the tokenizer's feature width)
  cond_tokens: int = 16  # how many condition tokens (the tokenizer's tokens per image)
  cond_dropout: float = 0.1  # probability of the null condition in training (for CFG)
  # Also add each condition token to the patches it covers (the condition tokens are a square
  # grid of the image, as a ViT's patch features are): the decoder then knows where every
  # feature belongs instead of having to learn it through attention. ILLUME+ conditions its
  # diffusion decoder by concatenation for the same reason.
  spatial_cond: bool = True
  dtype: str = "float32"

  def example_inputs(self) -> tuple:
    """Noisy images, diffusion times, condition tokens."""
    import jax
    import jax.numpy as jnp
    return (jax.ShapeDtypeStruct((1, self.image_size, self.image_size, self.channels),
                                 jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32),
            jax.ShapeDtypeStruct((1, self.cond_tokens, self.cond_dim), jnp.float32))

  def __post_init__(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f"pixel_decoder.architecture={self.architecture!r}; expected one of "
                       f"{ARCHITECTURES}")
    if self.image_size % self.patch_size:
      raise ValueError(f"pixel_decoder.image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}")
    if self.architecture == "conv" and not self.cond_tokens_tile_the_grid:
      raise ValueError(f"pixel_decoder.architecture='conv' needs the {self.cond_tokens} "
                       f"condition tokens to be a square grid dividing the "
                       f"{self.grid}x{self.grid} patch grid; use architecture='dit'")
    if self.architecture == "dit" and self.spatial_cond and not self.cond_tokens_tile_the_grid:
      raise ValueError(f"pixel_decoder.spatial_cond needs the {self.cond_tokens} condition "
                       f"tokens to be a square grid dividing the {self.grid}x{self.grid} patch "
                       f"grid; set spatial_cond=False")
    if self.architecture == "dit" and self.hidden_size % self.num_heads:
      raise ValueError(f"pixel_decoder.hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def cond_grid(self) -> int:
    return math.isqrt(self.cond_tokens)

  @property
  def cond_tokens_tile_the_grid(self) -> bool:
    """The condition tokens form a square grid whose cells cover whole patches."""
    return self.cond_grid ** 2 == self.cond_tokens and self.grid % self.cond_grid == 0
