"""A small CLIP: a ViT image tower and a transformer text tower, projected into one embedding
space and trained with the symmetric InfoNCE loss.

The text tower is built from the ViT's own encoder layers (LayerNorm, biased attention, MLP) with
learned positions, as CLIP's text model is: causal with the last real token (EOS) pooled, as in
CLIP, or bidirectional with the real tokens mean-pooled. Token sequences are right-padded with
`pad_id` and end in EOS.

    model = Clip(config)
    params = model.init(rng, images, tokens)['params']
    image_emb, text_emb, scale = model.apply({'params': params}, images, tokens)
    loss, metrics = contrastive_loss(image_emb, text_emb, scale)
    model.apply({'params': params}, images, method=Clip.encode_image)    # unit vectors
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unimodal_jax.models import vit
from unimodal_jax.models.decoder import ACT_HIDDEN
from unimodal_jax.models.model_config import ModelConfig

KIND = "clip"
TEXT_POOLINGS = ("eos", "mean")


@dataclasses.dataclass(frozen=True)
class TextConfig(ModelConfig):
  SECTION = "model.text"
  vocab_size: int
  max_len: int = 32
  hidden_size: int = 128
  intermediate_size: int = 256
  num_layers: int = 2
  num_heads: int = 4
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"
  causal: bool = True
  # 'eos': the last real token (CLIP; under causal attention the only one that saw the whole
  # text); 'mean': the mean over real tokens (natural with causal=False).
  pooling: str = "eos"
  pad_id: int = 0
  initializer_range: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "max_len", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.text.{name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.text.hidden_size={self.hidden_size} is not divisible by "
                       f"model.text.num_heads={self.num_heads}")
    if self.pooling not in TEXT_POOLINGS:
      raise ValueError(f"model.text.pooling={self.pooling!r}; expected one of {TEXT_POOLINGS}")
    if self.hidden_act not in vit.HIDDEN_ACTS:
      raise ValueError(f"model.text.hidden_act={self.hidden_act!r}; expected one of "
                       f"{vit.HIDDEN_ACTS}")
    self.check_dtypes()

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class ClipConfig(ModelConfig):
  KIND = KIND
  NESTED = {"vision": vit.VitConfig, "text": TextConfig}
  vision: vit.VitConfig
  text: TextConfig
  projection_dim: int = 64
  logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
  logit_scale_max: float = 100.0  # the learned scale is clipped here, as in CLIP

  def example_inputs(self) -> tuple:
    return (*self.vision.example_inputs(),
            jax.ShapeDtypeStruct((1, self.text.max_len), jnp.int32))

  def __post_init__(self):
    if self.vision.pooling == "none":
      raise ValueError("model.vision.pooling='none': CLIP needs a pooled image vector")
    if self.projection_dim <= 0:
      raise ValueError(f"model.projection_dim must be positive, got {self.projection_dim}")
    if not 0 < math.exp(self.logit_scale_init) <= self.logit_scale_max:
      raise ValueError(f"model.logit_scale_init={self.logit_scale_init} (scale "
                       f"{math.exp(self.logit_scale_init):.3g}) must be within (0, "
                       f"model.logit_scale_max={self.logit_scale_max}]")


class TextTransformer(nn.Module):
  """Token ids [B, T] (right-padded with pad_id) -> pooled [B, hidden], or with pool=False the
  final-norm states of every position [B, T, hidden] (a diffusion decoder's text condition, as
  SD reads CLIP's)."""
  config: TextConfig

  @nn.compact
  def __call__(self, tokens, pool: bool = True):
    cfg = self.config
    b, t = tokens.shape
    if t > cfg.max_len:
      raise ValueError(f"text of {t} tokens; model.text.max_len={cfg.max_len}")
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                     param_dtype=cfg.jnp_param_dtype, name="token_embedding",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")))
    pos = self.param("position_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(cfg.initializer_range), (None, "embed")),
        (cfg.max_len, cfg.hidden_size), cfg.jnp_param_dtype)
    x = embed(tokens) + pos[:t].astype(cfg.jnp_dtype)[None]
    x = nn.with_logical_constraint(x, ACT_HIDDEN)
    real = tokens != cfg.pad_id  # [B, T]
    # Keys must be real tokens; causal on top. Every query keeps key 0 (a real token), so no
    # softmax row is empty; padded queries' outputs are never pooled.
    mask = real[:, None, None, :]
    if cfg.causal:
      mask = mask & jnp.tril(jnp.ones((t, t), bool))[None, None]
    for i in range(cfg.num_layers):
      x = vit.EncoderLayer(cfg, name=f"layers_{i}")(x, mask=mask)
    x = vit.layer_norm(cfg, "final_norm")(x)
    if not pool:
      return x
    if cfg.pooling == "eos":
      last = jnp.maximum(jnp.sum(real, axis=1) - 1, 0)
      return x[jnp.arange(b), last]
    weights = real.astype(jnp.float32)[..., None]
    return (jnp.sum(x.astype(jnp.float32) * weights, 1)
            / jnp.maximum(jnp.sum(weights, 1), 1.0)).astype(x.dtype)


def _unit(x):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class Clip(nn.Module):
  config: ClipConfig

  def setup(self):
    cfg = self.config
    self.vision = vit.VisionTransformer(cfg.vision)
    self.text = TextTransformer(cfg.text)

    def projection(axis_in):
      return nn.Dense(cfg.projection_dim, use_bias=False, dtype=jnp.float32,
                      param_dtype=cfg.vision.jnp_param_dtype,
                      kernel_init=nn.with_logical_partitioning(
                          nn.initializers.normal(cfg.vision.initializer_range), (axis_in, None)))

    self.visual_projection = projection("embed")
    self.text_projection = projection("embed")
    self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
        nn.initializers.constant(cfg.logit_scale_init), ()), (), jnp.float32)

  def encode_image(self, images):
    """Normalized images [B, H, W, C] -> unit embeddings [B, projection_dim] (float32)."""
    return _unit(self.visual_projection(self.vision(images).pooled))

  def encode_text(self, tokens):
    """Token ids [B, T] -> unit embeddings [B, projection_dim] (float32)."""
    return _unit(self.text_projection(self.text(tokens)))

  def scale(self):
    """exp(logit_scale), clipped at logit_scale_max."""
    return jnp.minimum(jnp.exp(self.logit_scale), self.config.logit_scale_max)

  def __call__(self, images, tokens):
    return self.encode_image(images), self.encode_text(tokens), self.scale()


def contrastive_loss(image_emb, text_emb, scale, positives=None):
  """Symmetric InfoNCE: cross entropy of image->text and text->image similarity rows, averaged.

  positives: optional bool [B, B], True where image i and text j belong together (default the
  diagonal). With identical captions in a batch (a small world repeats them) the diagonal alone
  would push an image away from its own caption's twin; marking the twins positive spreads the
  target evenly over them instead. Returns (loss, {'loss', 'accuracy_i2t', 'accuracy_t2i'}).
  """
  logits = scale * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T)
  n = logits.shape[0]
  if positives is None:
    positives = jnp.eye(n, dtype=bool)
  pos = positives.astype(jnp.float32)
  i2t = optax.softmax_cross_entropy(logits, pos / jnp.sum(pos, 1, keepdims=True))
  t2i = optax.softmax_cross_entropy(logits.T, pos.T / jnp.sum(pos.T, 1, keepdims=True))
  loss = 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))
  rows = jnp.arange(n)
  metrics = {"loss": loss,
             "accuracy_i2t": jnp.mean(positives[rows, jnp.argmax(logits, 1)]),
             "accuracy_t2i": jnp.mean(positives[jnp.argmax(logits, 0), rows])}
  return loss, metrics
