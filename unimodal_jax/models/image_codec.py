"""A trained semantic tokenizer with its encoder and pixel decoder, as two functions on images:

    codec = ImageCodec.load(DIR)      # a `python -m unimodal_jax.train.tokenizer` workdir
    ids = codec.tokenize(images)      # uint8 [N, S, S, 3] -> int32 [N, tokens_per_image]
    images = codec.detokenize(ids, rng, steps=32, guidance=2.0)   # -> uint8 [N, S, S, 3]

tokenize = CLIP vision tower -> patch features -> VQ ids; detokenize = ids -> codebook ->
feature decoder -> reconstructed features -> diffusion pixel decoder (ILLUME's path from the
LLM's image tokens to pixels). Also exposes the CLIP vision tower's config and params, which the
ILLUME model reads images with.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unimodal_jax import checkpoints
from unimodal_jax.models import pixel_decoder as pdec
from unimodal_jax.models import vision_tokenizer as vt
from unimodal_jax.models import vit


def encoder_features(vision_config, vision_params, images, layer: int = -1):
  """uint8 images [N, S, S, 3] -> float32 patch features [N, P, hidden] of the ViT's hidden
  state `layer` (vit.VitOutput.layer), class token dropped: what the tokenizer quantizes."""
  out = vit.VisionTransformer(vision_config).apply(
      {"params": vision_params}, vit.normalize(images), return_hidden_states=layer != -1)
  return out.layer(layer)[:, int(vision_config.class_token):].astype(jnp.float32)


def flat_patches(images, num_tokens: int, rgb) -> np.ndarray:
  """bool [N, num_tokens]: which of the tokenizer's patches (a row-major grid of num_tokens
  over uint8 images [N, S, S, 3]) are exactly the colour `rgb` in every pixel."""
  n, size = images.shape[0], images.shape[1]
  grid = int(round(num_tokens ** 0.5))
  if grid * grid != num_tokens or size % grid:
    raise ValueError(f"flat_patches: {num_tokens} tokens do not tile {size}x{size} images as a "
                     f"square grid of whole patches")
  p = size // grid
  patches = images.reshape(n, grid, p, grid, p, 3)
  return (patches == np.asarray(rgb, images.dtype)).all(axis=(2, 4, 5)).reshape(n, num_tokens)


@dataclasses.dataclass
class ImageCodec:
  vision_config: vit.VitConfig
  vision_params: Any
  tokenizer_config: vt.SemanticTokenizerConfig
  tokenizer_variables: Any
  pixel_config: pdec.PixelDecoderConfig
  pixel_params: Any
  # Patches entirely this colour are written with the code the tokenizer gives an image of only
  # this colour, at the same position (None: the tokenizer's own codes). Why: the encoder's
  # features are contextual, so pixel-identical background patches get ~90 different codes
  # (4.5 nats each on the shapes world) that the pixel decoder ignores (the ceiling 0.883 ->
  # 0.892 with them replaced), and the LLM would otherwise learn to write that noise.
  background_rgb: tuple[int, int, int] | None = None

  @classmethod
  def load(cls, workdir: str, clip_workdir: str = "") -> "ImageCodec":
    clip_dir = clip_workdir or os.path.join(workdir, "clip")
    for d in (clip_dir, os.path.join(workdir, "tokenizer"), os.path.join(workdir, "pixel_decoder")):
      if not os.path.isdir(d):
        raise FileNotFoundError(f"{d}: missing; run python -m unimodal_jax.train.tokenizer "
                                f"--workdir={workdir} first")
    clip, clip_params = checkpoints.load_pretrained(clip_dir)
    tokenizer, tok_vars = checkpoints.load_pretrained(os.path.join(workdir, "tokenizer"))
    pixels, pd_params = checkpoints.load_pretrained(os.path.join(workdir, "pixel_decoder"))
    return cls(clip.config.vision, clip_params["vision"], tokenizer.config, tok_vars,
               pixels.config, pd_params)

  @property
  def tokens_per_image(self) -> int:
    return self.tokenizer_config.num_tokens

  @property
  def codebook_size(self) -> int:
    return self.tokenizer_config.codebook_size

  @property
  def image_size(self) -> int:
    return self.vision_config.image_size

  def _features(self, images):
    return encoder_features(self.vision_config, self.vision_params, images,
                            self.tokenizer_config.encoder_layer)

  @functools.cached_property
  def _encode(self):
    """images -> ids, jitted once per codec (pretokenize calls tokenize chunk after chunk)."""
    tokenizer = vt.SemanticTokenizer(self.tokenizer_config)
    return jax.jit(lambda x: tokenizer.apply(self.tokenizer_variables, self._features(x),
                                             method=vt.SemanticTokenizer.encode))

  def tokenize(self, images, batch: int = 256) -> np.ndarray:
    images = np.asarray(images)
    ids = self._tokenizer_ids(images, batch)
    if self.background_rgb is None:
      return ids
    flat = flat_patches(images, self.tokenizer_config.num_tokens, self.background_rgb)
    return np.where(flat, self._background_ids[None], ids)

  def _tokenizer_ids(self, images, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(self._encode(jnp.asarray(images[i:i + batch])))
                           for i in range(0, len(images), batch)]).astype(np.int32)

  @functools.cached_property
  def _background_ids(self) -> np.ndarray:
    """[tokens_per_image] ids of an image that is background_rgb everywhere."""
    plain = np.broadcast_to(np.asarray(self.background_rgb, np.uint8),
                            (1, self.image_size, self.image_size, 3))
    return self._tokenizer_ids(np.ascontiguousarray(plain))[0]

  def decode_features(self, ids):
    tokenizer = vt.SemanticTokenizer(self.tokenizer_config)
    return tokenizer.apply(self.tokenizer_variables, jnp.asarray(ids),
                           method=vt.SemanticTokenizer.decode_features)

  @functools.cached_property
  def _sample_pixels(self):
    """(tokenizer variables, pixel params, ids, rng) -> uint8 images, jitted once per codec."""
    decoder = pdec.PixelDecoder(self.pixel_config)
    tokenizer = vt.SemanticTokenizer(self.tokenizer_config)

    @functools.partial(jax.jit, static_argnames=("steps", "guidance"))
    def sample(tokenizer_variables, pixel_params, ids, rng, *, steps, guidance):
      cond = tokenizer.apply(tokenizer_variables, ids, method=vt.SemanticTokenizer.decode_features)
      return pdec.sample(decoder, pixel_params, cond, rng, steps=steps, guidance=guidance)
    return sample

  def detokenize(self, ids, rng, *, steps: int = 32, guidance: float = 2.0,
                 batch: int = 64, mesh=None) -> np.ndarray:
    """uint8 images [N, S, S, 3] for ids [N, tokens_per_image], `batch` at a time (chunk i
    samples with fold_in(rng, i)). With a `mesh`, each chunk's rows are split over its batch
    axes (data x fsdp; a short chunk padded with copies of its last row) and the decoders are
    replicated: every device decodes its share, as a pod decodes."""
    from unimodal_jax import sharding
    ids = np.asarray(ids)
    weights = (self.tokenizer_variables, self.pixel_params)
    if mesh is not None:  # copied to the mesh's devices once per mesh, not per call
      placed = self.__dict__.setdefault("_weights_on_mesh", {})
      if mesh not in placed:
        placed[mesh] = sharding.replicate(weights, mesh)
      weights = placed[mesh]
    out = []
    for i in range(0, len(ids), batch):
      chunk = ids[i:i + batch]
      rows = (jnp.asarray(chunk) if mesh is None
              else sharding.shard_rows(sharding.pad_rows(chunk, mesh), mesh))
      images = self._sample_pixels(*weights, rows, jax.random.fold_in(rng, i), steps=steps,
                                   guidance=float(guidance))
      out.append(sharding.gather_rows(images)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3),
                                                    np.uint8)
