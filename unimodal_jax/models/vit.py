"""Vision Transformer image encoder, laid out so CLIP and SigLIP vision towers load into it.

The two families differ in a handful of switches, all in `VitConfig`:

                     CLIP (ViT-B/L)         SigLIP
    patch conv bias  no                     yes
    class token      yes                    no
    pre-layernorm    yes                    no
    post-layernorm   on the pooled vector   on every output token
    pooling          class token ('cls')    attention probe ('map')
    activation       quick_gelu             gelu_tanh

Encoder layers are the usual pre-norm blocks (LayerNorm, biased multi-head attention, biased
two-layer MLP). Images come in channels-last, already normalized ([B, H, W, C] float; see
`normalize`). The output carries the last hidden states, the pooled vector and, on request, the
hidden states after every layer, in Hugging Face's order (index 0 = the embeddings that enter the
first layer, index -1 = the last layer's output), so `hidden_states[-2]` is the "penultimate
layer" feature that DreamLLM and LLaVA take from CLIP.

    model = VisionTransformer(config)
    params = model.init(rng, images)['params']
    out = model.apply({'params': params}, images, return_hidden_states=True)
    out.last_hidden_state, out.pooled, out.hidden_states
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from unimodal_jax.models.decoder import ACT_HEADS, ACT_HIDDEN, ACT_MLP, remat_policy
from unimodal_jax.models.decoder_config import REMAT_POLICIES
from unimodal_jax.models.model_config import ModelConfig

KIND = "vit"  # the "kind" marker in a saved model_config
HIDDEN_ACTS = ("quick_gelu", "gelu", "gelu_tanh")
POOLINGS = ("cls", "map", "mean", "none")
POST_LAYERNORMS = ("pooled", "sequence", "none")
# Per-channel pixel statistics the towers were trained with (images in [0, 1]).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VitConfig(ModelConfig):
  KIND = KIND
  SECTION = "vit"
  image_size: int = 224
  patch_size: int = 16
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"  # 'quick_gelu' (CLIP), 'gelu' (exact), 'gelu_tanh' (SigLIP)
  class_token: bool = True  # a learned token prepended to the patches (CLIP)
  patch_bias: bool = False  # the patch convolution has a bias (SigLIP)
  pre_layernorm: bool = True  # LayerNorm on the embeddings before the first layer (CLIP)
  # 'pooled': LayerNorm on the pooled vector only (CLIP); 'sequence': on every token of the last
  # hidden state, before pooling (SigLIP); 'none'.
  post_layernorm: str = "pooled"
  pooling: str = "cls"  # 'cls' (class token), 'map' (attention-probe head), 'mean', 'none'
  initializer_range: float = 0.02
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype
  remat_policy: str = "none"

  def __post_init__(self):
    for name in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_channels"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"vit.{name} must be positive, got {getattr(self, name)}")
    if self.image_size % self.patch_size:
      raise ValueError(f"vit.image_size={self.image_size} is not a multiple of "
                       f"vit.patch_size={self.patch_size}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"vit.hidden_size={self.hidden_size} is not divisible by "
                       f"vit.num_heads={self.num_heads}")
    if self.hidden_act not in HIDDEN_ACTS:
      raise ValueError(f"vit.hidden_act={self.hidden_act!r}; expected one of {HIDDEN_ACTS}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"vit.pooling={self.pooling!r}; expected one of {POOLINGS}")
    if self.pooling == "cls" and not self.class_token:
      raise ValueError("vit.pooling='cls' needs vit.class_token=True (there is no class token "
                       "to pool); use 'map' or 'mean'")
    if self.post_layernorm not in POST_LAYERNORMS:
      raise ValueError(f"vit.post_layernorm={self.post_layernorm!r}; expected one of "
                       f"{POST_LAYERNORMS}")
    if self.post_layernorm == "pooled" and self.pooling == "none":
      raise ValueError("vit.post_layernorm='pooled' needs a pooling other than 'none'")
    self.check_dtypes()
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"vit.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")

  def example_inputs(self) -> tuple:
    return (jax.ShapeDtypeStruct((1, self.image_size, self.image_size, self.num_channels),
                                 jnp.float32),)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def seq_len(self) -> int:
    return self.num_patches + int(self.class_token)

  def num_params(self) -> int:
    """Parameter count, from the shapes alone."""
    e, m, p, c = self.hidden_size, self.intermediate_size, self.patch_size, self.num_channels
    block = 4 * e * e + 4 * e + 2 * e * m + m + e + 4 * e  # attention, MLP, two LayerNorms
    total = p * p * c * e + (e if self.patch_bias else 0) + self.seq_len * e
    total += e if self.class_token else 0
    total += 2 * e if self.pre_layernorm else 0
    total += self.num_layers * block
    total += 2 * e if self.post_layernorm != "none" else 0
    if self.pooling == "map":
      total += e + block  # the probe, then attention + MLP + one LayerNorm (one fewer than a block)
      total -= 2 * e
    return total


@flax.struct.dataclass
class VitOutput:
  # [B, seq_len, hidden]; LayerNorm'd only with post_layernorm='sequence' (as in transformers)
  last_hidden_state: jax.Array
  pooled: jax.Array | None  # [B, hidden]; None for pooling='none'
  hidden_states: tuple | None = None  # num_layers + 1 arrays [B, seq_len, hidden], when asked for

  def layer(self, index: int):
    """Hidden state `index` as `hidden_states` numbers them (0 the patch embeddings, -1 the
    last layer's output); -1 needs no hidden_states."""
    if index == -1:
      return self.last_hidden_state
    if self.hidden_states is None:
      raise ValueError(f"hidden state {index} asked of a ViT output made without "
                       "return_hidden_states=True")
    return self.hidden_states[index]


def normalize(images, mean=CLIP_MEAN, std=CLIP_STD):
  """uint8 (or [0, 255] float) [..., H, W, C] images -> the float32 input the towers expect."""
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def activation(name: str):
  if name == "quick_gelu":  # CLIP's sigmoid approximation, x * sigmoid(1.702 x)
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "gelu":
    return functools.partial(jax.nn.gelu, approximate=False)
  if name == "gelu_tanh":
    return functools.partial(jax.nn.gelu, approximate=True)
  raise ValueError(f"unknown activation {name!r}; expected one of {HIDDEN_ACTS}")


# ----------------------------------------------------------------------------- building blocks
#
# The blocks read their sizes from `config` by field name (hidden_size, intermediate_size,
# num_heads, head_dim, layer_norm_eps, hidden_act, initializer_range, jnp_dtype, jnp_param_dtype),
# so the CLIP text tower in clip.py reuses them with its own config.


def _normal(config, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def layer_norm(config, name: str) -> nn.LayerNorm:
  # The exact (two-pass) variance: the fast E[x^2] - E[x]^2 form drifts by ~1e-5 from PyTorch.
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype,
      use_fast_variance=False, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=_zeros(("norm",)))


class HeadProjection(nn.Module):
  """[B, T, embed] -> [B, T, heads, head_dim] with a bias (an einsum, as in decoder.py, so the
  3-axis kernel keeps its logical partitioning)."""
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", _normal(cfg, ("embed", "heads", "head_dim")),
                        (cfg.hidden_size, cfg.num_heads, cfg.head_dim), cfg.jnp_param_dtype)
    bias = self.param("bias", _zeros(("heads", "head_dim")), (cfg.num_heads, cfg.head_dim),
                      cfg.jnp_param_dtype)
    out = jnp.einsum("bte,ehd->bthd", x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype))
    return out + bias.astype(cfg.jnp_dtype)


class OutputProjection(nn.Module):
  """[B, T, heads, head_dim] -> [B, T, embed] with a bias."""
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", _normal(cfg, ("heads", "head_dim", "embed")),
                        (cfg.num_heads, cfg.head_dim, cfg.hidden_size), cfg.jnp_param_dtype)
    bias = self.param("bias", _zeros(("embed",)), (cfg.hidden_size,), cfg.jnp_param_dtype)
    out = jnp.einsum("bthd,hde->bte", x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype))
    return out + bias.astype(cfg.jnp_dtype)


class Attention(nn.Module):
  """Multi-head attention with biases. Non-causal unless `mask` says otherwise; queries may come
  from another sequence than keys/values (the attention-pooling probe)."""
  config: Any

  @nn.compact
  def __call__(self, x, kv=None, mask=None):
    """x: [B, Tq, embed]; kv: [B, Tk, embed] (default x); mask: bool broadcastable to
    [B, heads, Tq, Tk], True where a query may attend."""
    cfg = self.config
    kv = x if kv is None else kv
    q = nn.with_logical_constraint(HeadProjection(cfg, name="q_proj")(x), ACT_HEADS)
    k = HeadProjection(cfg, name="k_proj")(kv)
    v = HeadProjection(cfg, name="v_proj")(kv)
    # Scores and softmax in float32 whatever the compute dtype; scale 1/sqrt(head_dim).
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    out = nn.with_logical_constraint(out, ACT_HEADS)
    return OutputProjection(cfg, name="o_proj")(out)


class MLP(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = functools.partial(nn.Dense, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    h = dense(cfg.intermediate_size, name="fc1", kernel_init=_normal(cfg, ("embed", "mlp")),
              bias_init=_zeros(("mlp",)))(x)
    h = nn.with_logical_constraint(activation(cfg.hidden_act)(h), ACT_MLP)
    return dense(cfg.hidden_size, name="fc2", kernel_init=_normal(cfg, ("mlp", "embed")),
                 bias_init=_zeros(("embed",)))(h)


class EncoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm1(x)), then + mlp(norm2(x))."""
  config: Any

  @nn.compact
  def __call__(self, x, mask=None):
    cfg = self.config
    x = x + Attention(cfg, name="attn")(layer_norm(cfg, "norm1")(x), mask=mask)
    x = x + MLP(cfg, name="mlp")(layer_norm(cfg, "norm2")(x))
    return nn.with_logical_constraint(x, ACT_HIDDEN)


class AttentionPool(nn.Module):
  """SigLIP's multi-head attention pooling ("MAP"): a learned probe attends over the tokens, then
  a residual MLP on LayerNorm of the result."""
  config: Any

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    probe = self.param("probe", _normal(cfg, (None, None, "embed")), (1, 1, cfg.hidden_size),
                       cfg.jnp_param_dtype)
    probe = jnp.broadcast_to(probe.astype(cfg.jnp_dtype), (x.shape[0], 1, cfg.hidden_size))
    h = Attention(cfg, name="attn")(probe, kv=x)
    h = h + MLP(cfg, name="mlp")(layer_norm(cfg, "norm")(h))
    return h[:, 0]


class PatchEmbed(nn.Module):
  """Non-overlapping patch x patch convolution, written as a reshape and an einsum. The kernel is
  [patch, patch, channels, embed] (HWIO), i.e. PyTorch's [embed, channels, patch, patch]
  transposed (2, 3, 1, 0)."""
  config: VitConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    b, h, w, c = images.shape
    p = cfg.patch_size
    if (h, w, c) != (cfg.image_size, cfg.image_size, cfg.num_channels):
      raise ValueError(f"images of shape {images.shape}; this ViT takes [batch, {cfg.image_size}, "
                       f"{cfg.image_size}, {cfg.num_channels}] (channels last, normalized)")
    kernel = self.param("kernel", _normal(cfg, (None, None, None, "embed")),
                        (p, p, c, cfg.hidden_size), cfg.jnp_param_dtype)
    patches = images.astype(cfg.jnp_dtype).reshape(b, h // p, p, w // p, p, c)
    out = jnp.einsum("bypxqc,pqce->byxe", patches, kernel.astype(cfg.jnp_dtype))
    out = out.reshape(b, (h // p) * (w // p), cfg.hidden_size)  # row-major, as torch's flatten(2)
    if cfg.patch_bias:
      out = out + self.param("bias", _zeros(("embed",)), (cfg.hidden_size,),
                             cfg.jnp_param_dtype).astype(cfg.jnp_dtype)
    return out


class VisionTransformer(nn.Module):
  """Images [B, H, W, C] (normalized, channels last) -> VitOutput."""
  config: VitConfig

  @nn.compact
  def __call__(self, images, *, return_hidden_states: bool = False) -> VitOutput:
    cfg = self.config
    x = PatchEmbed(cfg, name="patch_embed")(images)
    if cfg.class_token:
      cls = self.param("class_embedding", _normal(cfg, ("embed",)), (cfg.hidden_size,),
                       cfg.jnp_param_dtype)
      cls = jnp.broadcast_to(cls.astype(cfg.jnp_dtype), (x.shape[0], 1, cfg.hidden_size))
      x = jnp.concatenate([cls, x], axis=1)
    pos = self.param("position_embedding", _normal(cfg, (None, "embed")),
                     (cfg.seq_len, cfg.hidden_size), cfg.jnp_param_dtype)
    x = x + pos.astype(cfg.jnp_dtype)[None]
    if cfg.pre_layernorm:
      x = layer_norm(cfg, "pre_norm")(x)
    x = nn.with_logical_constraint(x, ACT_HIDDEN)

    layer_cls = EncoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=remat_policy(cfg.remat_policy))
    hidden_states = [x]
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x)
      hidden_states.append(x)

    if cfg.post_layernorm == "sequence":
      x = layer_norm(cfg, "post_norm")(x)
    if cfg.pooling == "cls":
      pooled = x[:, 0]
    elif cfg.pooling == "mean":
      pooled = jnp.mean(x[:, int(cfg.class_token):].astype(jnp.float32), axis=1).astype(x.dtype)
    elif cfg.pooling == "map":
      pooled = AttentionPool(cfg, name="map_head")(x)
    else:
      pooled = None
    if cfg.post_layernorm == "pooled":
      pooled = layer_norm(cfg, "post_norm")(pooled)
    return VitOutput(last_hidden_state=x, pooled=pooled,
                     hidden_states=tuple(hidden_states) if return_hidden_states else None)


def patch_features(output: VitOutput, config: VitConfig, layer: int = -2) -> jax.Array:
  """Patch tokens (class token dropped) of one entry of hidden_states: LLaVA's and DreamLLM's
  image features are layer -2 of a CLIP ViT-L/14. Needs return_hidden_states=True."""
  if output.hidden_states is None:
    raise ValueError("patch_features needs the hidden states: call the model with "
                     "return_hidden_states=True")
  return output.hidden_states[layer][:, int(config.class_token):]


def init_params(config: VitConfig, rng=None):
  """Unboxed params of a freshly initialized tower (for tests and from-scratch training)."""
  model = VisionTransformer(config)
  images = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
  rng = jax.random.key(0) if rng is None else rng
  return nn.meta.unbox(jax.jit(model.init)(rng, images)["params"])  # eager init is slow


def param_shapes(config: VitConfig) -> dict:
  """{'a/b/c': shape} of every parameter, computed abstractly (no memory)."""
  shapes = jax.eval_shape(lambda: init_params(config))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in flat}


__all__ = ["VitConfig", "VitOutput", "VisionTransformer", "EncoderLayer", "Attention", "MLP",
           "AttentionPool", "normalize", "patch_features", "init_params", "param_shapes",
           "CLIP_MEAN", "CLIP_STD", "SIGLIP_MEAN", "SIGLIP_STD", "KIND"]

