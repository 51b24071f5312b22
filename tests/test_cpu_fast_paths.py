"""The CPU formulations issue 8 added (blockwise attention, closed-form cross entropy, linear
layers with an explicit weight gradient) against the plain references, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unimodal_jax.models import attention
from unimodal_jax.models.blockwise_attention import blockwise_causal_attention
from unimodal_jax.models.linear import _matmul, linear
from unimodal_jax.train.cross_entropy import cross_entropy_lse_and_correct


def _normal(rng, shape, dtype=jnp.float32):
  return jnp.asarray(rng.normal(size=shape), dtype)


@pytest.mark.parametrize("length,block_q,heads,kv_heads", [
    pytest.param(64, 16, 4, 4, marks=pytest.mark.slow),  # blocks divide the length
    pytest.param(50, 16, 4, 2, marks=pytest.mark.slow),  # ragged last block, grouped-query
    pytest.param(37, 64, 6, 1, marks=pytest.mark.slow),  # one block longer than the sequence
])
def test_blockwise_attention_matches_reference(length, block_q, heads, kv_heads):
  rng = np.random.default_rng(length)
  b, d = 3, 8
  q = _normal(rng, (b, length, heads, d))
  k = _normal(rng, (b, length, kv_heads, d))
  v = _normal(rng, (b, length, kv_heads, d))
  # Row 0: one document; row 1: two packed documents; row 2: a document then padding (0).
  seg = np.ones((b, length), np.int32)
  seg[1, length // 3:] = 2
  seg[2, length - 7:] = 0
  seg = jnp.asarray(seg)
  weights = _normal(rng, (b, length, heads, d))

  def ref(q, k, v):
    return attention.dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                           impl="xla")

  def new(q, k, v):
    return blockwise_causal_attention(q, k, v, seg, block_q=block_q)

  np.testing.assert_allclose(new(q, k, v), ref(q, k, v), atol=2e-6, rtol=1e-5)
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=(0, 1, 2))(q, k, v)
  for got, want, name in zip(grads(new), grads(ref), "qkv"):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=f"d{name}")


def test_auto_dispatch_uses_blockwise_on_cpu_for_training_only():
  rng = np.random.default_rng(0)
  q = _normal(rng, (1, 16, 2, 4))
  seg = jnp.ones((1, 16), jnp.int32)
  jaxpr = str(jax.make_jaxpr(lambda q: attention.dot_product_attention(
      q, q, q, q_segment_ids=seg, kv_segment_ids=seg, impl="auto"))(q))
  assert "custom_vjp_call" in jaxpr
  with pytest.raises(ValueError, match="blockwise.*KV-cache"):
    attention.dot_product_attention(q[:, :1], q, q, q_segment_ids=seg[:, :1],
                                    kv_segment_ids=seg, q_offset=3, impl="blockwise")


def test_blockwise_attention_rejects_bad_shapes():
  q = jnp.zeros((1, 8, 3, 4))
  with pytest.raises(ValueError, match="dividing query heads"):
    blockwise_causal_attention(q, jnp.zeros((1, 8, 2, 4)), jnp.zeros((1, 8, 2, 4)),
                               jnp.ones((1, 8), jnp.int32))


def test_cross_entropy_matches_optax_with_lse_gradient():
  rng = np.random.default_rng(1)
  logits = _normal(rng, (2, 5, 11)) * 3
  labels = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
  ce, lse, correct = cross_entropy_lse_and_correct(logits, labels)
  np.testing.assert_allclose(ce, optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, -1), rtol=1e-6)
  np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  w = _normal(rng, (2, 5))

  def ours(x):  # the loss with a z-loss term, so both cotangents are non-zero
    ce, lse, _ = cross_entropy_lse_and_correct(x, labels)
    return jnp.sum(w * ce) + 0.1 * jnp.sum(lse ** 2)

  def reference(x):
    return (jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(x, labels))
            + 0.1 * jnp.sum(jax.nn.logsumexp(x, -1) ** 2))

  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits),
                             rtol=1e-5, atol=1e-6)


def test_cross_entropy_counts_a_label_tied_for_the_max_as_correct():
  logits = jnp.asarray([[1.0, 3.0, 3.0, 0.0]])
  _, _, correct = cross_entropy_lse_and_correct(logits, jnp.asarray([2]))
  assert float(correct[0]) == 1.0


def test_linear_explicit_gradient_matches_einsum():
  rng = np.random.default_rng(2)
  x = _normal(rng, (3, 7, 5))
  kernel = _normal(rng, (5, 9))
  g = _normal(rng, (3, 7, 9))
  ours = jax.grad(lambda x, k: jnp.sum(linear(x, k) * g), argnums=(0, 1))(x, kernel)
  plain = jax.grad(lambda x, k: jnp.sum(_matmul(x, k) * g), argnums=(0, 1))(x, kernel)
  assert "custom_vjp_call" in str(jax.make_jaxpr(linear)(x, kernel))  # the CPU path was taken
  for got, want in zip(ours, plain):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
