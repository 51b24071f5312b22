"""The decoder against properties that must hold and against a slow numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax.checkpoints import stack_layers, unstack_layers
from unimodal_jax.models.attention import dot_product_attention
from unimodal_jax.models.decoder import Decoder, init_cache
from unimodal_jax.models.decoder_config import DecoderConfig
from tests.helpers import init_params, tiny_config


def _tokens(shape, vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def _numpy_attention(q, k, v, q_seg, kv_seg):
  """Slow reference: loops over batch and heads, GQA by repeating key/value heads."""
  b, tq, n, d = q.shape
  group = n // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for h in range(n):
      s = q[bi, :, h] @ k[bi, :, h // group].T / np.sqrt(d)
      mask = (np.arange(k.shape[1])[None] <= np.arange(tq)[:, None]) & (
          q_seg[bi][:, None] == kv_seg[bi][None])
      s = np.where(mask, s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[bi, :, h] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, h // group]
  return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (8, 1)])
def test_attention_matches_numpy_reference(heads, kv_heads):
  rng = np.random.RandomState(heads)
  b, t, d = 2, 13, 8
  q = rng.randn(b, t, heads, d).astype(np.float32)
  k = rng.randn(b, t, kv_heads, d).astype(np.float32)
  v = rng.randn(b, t, kv_heads, d).astype(np.float32)
  seg = np.array([[1] * 5 + [2] * 6 + [0] * 2, [1] * 13], np.int32)
  got = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, seg, seg), atol=2e-6)


@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_kv_cache_decoding_equals_full_forward(scan):
  config = tiny_config(scan_layers=scan)
  model, params = init_params(config)
  assert ("layers" in params) == scan
  tokens = _tokens((2, 10), config.vocab_size)
  full = model.apply({"params": params}, tokens)
  cache = init_cache(config, batch=2, max_len=16)
  logits, cache = model.apply({"params": params}, tokens[:, :6], cache=cache)
  steps = [logits]
  for t in range(6, 10):
    logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], cache=cache)
    steps.append(logits)
  assert int(cache["index"]) == 10
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_left_padded_cache_matches_unpadded_rows():
  """A batch with a short prompt left-padded (segment 0) gives that row's unpadded logits."""
  config = tiny_config()
  model, params = init_params(config)
  prompt = _tokens((1, 5), config.vocab_size, seed=3)
  alone = model.apply({"params": params}, prompt)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), prompt], axis=1)
  segments = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1]], jnp.int32)
  positions = jnp.array([[0, 0, 0, 0, 1, 2, 3, 4]], jnp.int32)
  logits, _ = model.apply({"params": params}, padded, positions=positions, segment_ids=segments,
                          cache=init_cache(config, 1, 8))
  np.testing.assert_allclose(logits[:, 3:], alone, atol=1e-5)


def test_scanned_and_unrolled_layers_agree():
  config = tiny_config()
  model, params = init_params(config)
  tokens = _tokens((2, 9), config.vocab_size)
  scanned = Decoder(config.replace(scan_layers=True))
  stacked = stack_layers(params, config.num_layers, jnp.stack)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, tokens),
                             model.apply({"params": params}, tokens), atol=1e-5)
  back = unstack_layers(stacked, config.num_layers)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, params))


@pytest.mark.parametrize("scan,policy", [
    # The default suite keeps one policy per layer layout; the others run with -m slow.
    pytest.param(scan, policy, marks=() if (scan, policy) in ((True, "full"), (False, "dots"))
                 else pytest.mark.slow)
    for scan in (False, True) for policy in ("full", "dots", "dots_no_batch", "qkv_and_attention")])
def test_remat_policies_keep_loss_and_grads(policy, scan):
  config = tiny_config(scan_layers=scan)
  _, params = init_params(config)
  tokens = _tokens((2, 8), config.vocab_size)

  def loss(model, p):
    return -jax.nn.log_softmax(model.apply({"params": p}, tokens)).mean()

  ref_loss, ref_grads = jax.value_and_grad(lambda p: loss(Decoder(config), p))(params)
  remat = Decoder(config.replace(remat_policy=policy))
  got_loss, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_grads, ref_grads)


def test_packed_segments_are_independent():
  """Two sequences packed in one row give the logits each gives alone (positions restart)."""
  config = tiny_config()
  model, params = init_params(config)
  a, b = _tokens((1, 5), config.vocab_size, 1), _tokens((1, 7), config.vocab_size, 2)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 7], jnp.int32)
  positions = jnp.array([list(range(5)) + list(range(7))], jnp.int32)
  logits = model.apply({"params": params}, packed, positions=positions, segment_ids=segments)
  np.testing.assert_allclose(logits[:, :5], model.apply({"params": params}, a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 5:], model.apply({"params": params}, b), atol=1e-5)


def test_inputs_embeds_path_equals_token_path():
  config = tiny_config(tie_embeddings=True, qkv_bias=True)
  model, params = init_params(config)
  tokens = _tokens((2, 6), config.vocab_size)
  embeds = params["embed_tokens"]["embedding"][tokens]
  np.testing.assert_allclose(model.apply({"params": params}, inputs_embeds=embeds),
                             model.apply({"params": params}, tokens), atol=1e-6)
  assert "lm_head" not in params


def test_bfloat16_compute_stays_close_to_float32():
  config = tiny_config()
  model, params = init_params(config)
  tokens = _tokens((2, 8), config.vocab_size)
  f32 = model.apply({"params": params}, tokens)
  bf16 = Decoder(config.replace(dtype="bfloat16")).apply({"params": params}, tokens)
  assert bf16.dtype == jnp.float32  # logits_dtype
  assert float(jnp.abs(bf16 - f32).max()) < 0.05
  assert float(jnp.abs(bf16 - f32).max()) > 0  # it really computed in bf16


def test_param_count_matches_init():
  for overrides in ({}, {"qkv_bias": True, "o_bias": True, "tie_embeddings": True}):
    config = tiny_config(**overrides)
    _, params = init_params(config)
    assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params()


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="num_kv_heads"):
    DecoderConfig(vocab_size=8, hidden_size=16, intermediate_size=8, num_layers=1, num_heads=4,
                  num_kv_heads=3)
  with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['num_layer'\]"):
    DecoderConfig.from_dict({"vocab_size": 8, "num_layer": 2})
  with pytest.raises(ValueError, match="remat_policy"):
    tiny_config(remat_policy="everything")
  with pytest.raises(ValueError, match="exactly one of tokens or inputs_embeds"):
    model, params = init_params(tiny_config())
    model.apply({"params": params})


@pytest.mark.slow
def test_fused_attention_path_matches_xla():
  """attention_impl='pallas' (the flash-attention kernel, interpret mode on CPU) gives the XLA
  path's logits and gradients, packed segments included."""
  config = tiny_config(num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64)
  _, params = init_params(config)
  tokens = _tokens((2, 24), config.vocab_size)
  segments = jnp.array([[1] * 10 + [2] * 14, [1] * 20 + [0] * 4], jnp.int32)
  positions = jnp.array([list(range(10)) + list(range(14)), list(range(24))], jnp.int32)

  def loss(impl, p):
    logits = Decoder(config.replace(attention_impl=impl)).apply(
        {"params": p}, tokens, segment_ids=segments, positions=positions)
    return (logits * jnp.cos(jnp.arange(config.vocab_size))).mean(), logits

  (ref_loss, ref_logits), ref_grads = jax.value_and_grad(
      lambda p: loss("xla", p), has_aux=True)(params)
  (got_loss, got_logits), got_grads = jax.value_and_grad(
      lambda p: loss("pallas", p), has_aux=True)(params)
  np.testing.assert_allclose(got_logits, ref_logits, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got_grads, ref_grads)
