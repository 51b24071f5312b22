"""LLaMA/Vicuna and Qwen2-family decoder as a pure-functional Flax Linen module.

RMSNorm, rotary embeddings (rotate-half, as Hugging Face), grouped-query attention, SwiGLU MLP, an
explicit KV cache for incremental decoding, optional `nn.scan` over layers and remat by policy
name. Every parameter carries logical axis names; `unimodal_jax.sharding` maps them to the mesh.

    model = Decoder(config)
    params = model.init(rng, tokens)['params']
    logits = model.apply({'params': params}, tokens)                       # [B, T, vocab]
    cache = init_cache(config, batch, max_len)
    logits, cache = model.apply({'params': params}, tokens, cache=cache)   # incremental
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from unimodal_jax.models.attention import cached_attention, dot_product_attention, target_platform
from unimodal_jax.models.decoder_config import DecoderConfig
from unimodal_jax.models.linear import Linear, linear

# Activation logical axes (the rules table in sharding.py maps them to mesh axes).
ACT_HIDDEN = ("act_batch", "act_length", "act_embed")
ACT_HEADS = ("act_batch", "act_length", "act_heads", None)
ACT_MLP = ("act_batch", "act_length", "act_mlp")
ACT_VOCAB = ("act_batch", "act_length", "act_vocab")


def _normal(config: DecoderConfig, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def remat_policy(name: str):
  """The jax.checkpoint policy for a policy name ('none' means no remat at all)."""
  policies = jax.checkpoint_policies
  return {
      "full": policies.nothing_saveable,
      "dots": policies.checkpoint_dots,
      "dots_no_batch": policies.dots_with_no_batch_dims_saveable,
      # Keep the projected q/k/v and the attention output; recompute the MLP and norms.
      "qkv_and_attention": policies.save_only_these_names("query", "key", "value", "attention"),
  }[name]


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def apply_rope(x, positions, theta: float):
  """Rotary embedding, rotate-half convention (first half / second half of head_dim), in f32."""
  head_dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class HeadProjection(nn.Module):
  """[B, T, embed] -> [B, T, heads, head_dim]; an einsum, since nn.DenseGeneral's internal
  reshape of its kernel does not carry 3-axis logical partitioning."""
  config: DecoderConfig
  heads: int
  heads_axis: str

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", _normal(cfg, ("embed", self.heads_axis, "head_dim")),
                        (cfg.hidden_size, self.heads, cfg.head_dim), cfg.jnp_param_dtype)
    x, kernel = x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype)
    if target_platform() == "cpu":  # as one [embed, heads * head_dim] matmul (see linear.py)
      out = linear(x, kernel.reshape(cfg.hidden_size, -1)).reshape(
          *x.shape[:-1], self.heads, cfg.head_dim)
    else:  # keeps the kernel's 3-axis sharding
      out = jnp.einsum("bte,ehd->bthd", x, kernel)
    if cfg.qkv_bias:
      bias = self.param("bias", _zeros((self.heads_axis, "head_dim")), (self.heads, cfg.head_dim),
                        cfg.jnp_param_dtype)
      out = out + bias.astype(cfg.jnp_dtype)
    return out


class OutputProjection(nn.Module):
  """[B, T, heads, head_dim] -> [B, T, embed]."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", _normal(cfg, ("heads", "head_dim", "embed")),
                        (cfg.num_heads, cfg.head_dim, cfg.hidden_size), cfg.jnp_param_dtype)
    x, kernel = x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype)
    if target_platform() == "cpu":
      out = linear(x.reshape(*x.shape[:-2], -1), kernel.reshape(-1, cfg.hidden_size))
    else:
      out = jnp.einsum("bthd,hde->bte", x, kernel)
    if cfg.o_bias:
      out = out + self.param("bias", _zeros(("embed",)), (cfg.hidden_size,),
                             cfg.jnp_param_dtype).astype(cfg.jnp_dtype)
    return out


class Attention(nn.Module):
  config: DecoderConfig
  cache_layer: int | None = None  # unscanned: this layer's index into the stacked cache

  @nn.compact
  def __call__(self, x, positions, segment_ids, layer_cache, cache_index, cache_segment_ids):
    cfg = self.config
    q = HeadProjection(cfg, cfg.num_heads, "heads", name="q_proj")(x)
    k = HeadProjection(cfg, cfg.num_kv_heads, "kv_heads", name="k_proj")(x)
    v = HeadProjection(cfg, cfg.num_kv_heads, "kv_heads", name="v_proj")(x)
    q = apply_rope(q, positions, cfg.rope_theta)
    k = apply_rope(k, positions, cfg.rope_theta)
    q = checkpoint_name(nn.with_logical_constraint(q, ACT_HEADS), "query")
    k = checkpoint_name(k, "key")
    v = checkpoint_name(v, "value")

    if layer_cache is None:
      out = dot_product_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                  impl=cfg.attention_impl)
      new_cache = None
    else:
      # The cache is [B, K, S, D] (heads-major, see cached_attention). Unscanned layers share
      # the stacked [layers, ...] arrays and write their slots in place (layer index first);
      # a scanned layer gets its own slice.
      cache_k, cache_v = layer_cache
      lead = () if self.cache_layer is None else (self.cache_layer,)
      index = lead + (0, 0, cache_index, 0)

      def write(cache, new):
        new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)  # [B, T, K, D] -> [B, K, T, D]
        return jax.lax.dynamic_update_slice(cache, new.reshape((1,) * len(lead) + new.shape),
                                            index)
      cache_k, cache_v = write(cache_k, k), write(cache_v, v)
      layer_k = cache_k if self.cache_layer is None else cache_k[self.cache_layer]
      layer_v = cache_v if self.cache_layer is None else cache_v[self.cache_layer]
      out = cached_attention(q, layer_k, layer_v, q_segment_ids=segment_ids,
                             kv_segment_ids=cache_segment_ids, q_offset=cache_index)
      new_cache = (cache_k, cache_v)
    out = checkpoint_name(nn.with_logical_constraint(out, ACT_HEADS), "attention")
    out = OutputProjection(cfg, name="o_proj")(out)
    return out, new_cache


class MLP(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = functools.partial(Linear, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    gate = dense(cfg.intermediate_size, name="gate_proj", kernel_init=_normal(cfg, ("embed", "mlp")))(x)
    up = dense(cfg.intermediate_size, name="up_proj", kernel_init=_normal(cfg, ("embed", "mlp")))(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ACT_MLP)
    return dense(cfg.hidden_size, name="down_proj", kernel_init=_normal(cfg, ("mlp", "embed")))(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block. Signature (carry, per-layer input, broadcast args...) fits `nn.scan`."""
  config: DecoderConfig
  cache_layer: int | None = None  # see Attention

  @nn.compact
  def __call__(self, x, layer_cache, positions, segment_ids, cache_index, cache_segment_ids):
    cfg = self.config
    norm = functools.partial(RMSNorm, eps=cfg.rms_norm_eps, dtype=cfg.jnp_dtype,
                             param_dtype=cfg.jnp_param_dtype)
    attn_out, new_cache = Attention(cfg, self.cache_layer, name="attn")(
        norm(name="input_norm")(x), positions, segment_ids, layer_cache, cache_index,
        cache_segment_ids)
    x = x + attn_out
    x = x + MLP(cfg, name="mlp")(norm(name="post_attn_norm")(x))
    x = nn.with_logical_constraint(x, ACT_HIDDEN)
    return x, new_cache


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache: keys/values stacked over layers, [layers, batch, kv_heads, max_len,
  head_dim] (heads-major, see attention.cached_attention), the segment id of each slot, and the
  next slot to write. Slots with segment 0 are padding and are never attended by real tokens."""
  dtype = dtype or config.jnp_dtype
  shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
  return {
      "k": jnp.zeros(shape, dtype),
      "v": jnp.zeros(shape, dtype),
      "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


class Decoder(nn.Module):
  """Token ids (or ready embeddings) -> logits over the vocabulary."""
  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                                 param_dtype=cfg.jnp_param_dtype,
                                 embedding_init=_normal(cfg, ("vocab", "embed")))
    layer_cls = DecoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=remat_policy(cfg.remat_policy),
                           prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(cfg)
    else:
      self.layers = [layer_cls(cfg, i, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.vocab_size, dtype=cfg.jnp_dtype,
                            param_dtype=cfg.jnp_param_dtype,
                            kernel_init=_normal(cfg, ("embed", "vocab")))

  def embed(self, tokens):
    return self.embed_tokens(tokens)

  def logits(self, hidden):
    cfg = self.config
    if cfg.tie_embeddings:
      out = self.embed_tokens.attend(hidden)
    else:
      out = self.lm_head(hidden)
    return nn.with_logical_constraint(out, ACT_VOCAB).astype(cfg.logits_dtype)

  def __call__(self, tokens=None, *, inputs_embeds=None, positions=None, segment_ids=None,
               cache=None, return_hidden=False):
    """tokens int32 [B, T] (or inputs_embeds [B, T, hidden]); positions default to 0..T-1 (or
    continue from the cache); segment_ids default to all ones (0 = padding).

    Returns logits [B, T, vocab]; with a cache, (logits, new_cache); with return_hidden, the
    final-norm hidden states are returned after the logits as well.
    """
    cfg = self.config
    if (tokens is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of tokens or inputs_embeds")
    x = self.embed(tokens) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
    batch, length = x.shape[:2]
    if segment_ids is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    cache_index = None if cache is None else cache["index"]
    if positions is None:
      start = 0 if cache is None else cache_index
      positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
    x = nn.with_logical_constraint(x, ACT_HIDDEN)

    cache_segment_ids = None
    layer_caches = None
    if cache is not None:
      cache_segment_ids = jax.lax.dynamic_update_slice(
          cache["segment_ids"], segment_ids.astype(jnp.int32), (0, cache_index))
      layer_caches = (cache["k"], cache["v"])

    if cfg.scan_layers:
      x, new_layer_caches = self.layers(x, layer_caches, positions, segment_ids, cache_index,
                                        cache_segment_ids)
    else:  # each layer writes its slots of the stacked cache in place and passes it on
      new_layer_caches = layer_caches
      for layer in self.layers:
        x, new_layer_caches = layer(x, new_layer_caches, positions, segment_ids, cache_index,
                                    cache_segment_ids)

    hidden = self.final_norm(x)
    logits = self.logits(hidden)
    result = [logits]
    if cache is not None:
      result.append({"k": new_layer_caches[0], "v": new_layer_caches[1],
                     "segment_ids": cache_segment_ids, "index": cache_index + length})
    if return_hidden:
      result.append(hidden)
    return result[0] if len(result) == 1 else tuple(result)
