"""The fused CPU attention kernels (kernels/cpu_attention.cc) against the XLA reference: values and
gradients, grouped-query heads, packed and padded rows, each head_dim, on a sharded mesh, and the
dispatch and fallback around them."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unimodal_jax import sharding
from unimodal_jax.kernels import cpu_attention
from unimodal_jax.models import attention

pytestmark = pytest.mark.skipif(not cpu_attention.available(),
                                reason="no C++ compiler: the CPU kernels do not build here")


def _inputs(rng, b, t, heads, kv_heads, d):
  normal = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  # Row 0: one document; row 1: three packed documents; the rest: a document then padding (0).
  seg = np.ones((b, t), np.int32)
  seg[1, t // 3:] = 2
  seg[1, 2 * t // 3:] = 3
  seg[2:, t - 5:] = 0
  return (normal((b, t, heads, d)), normal((b, t, kv_heads, d)), normal((b, t, kv_heads, d)),
          jnp.asarray(seg), normal((b, t, heads, d)))


def _reference(q, k, v, seg):
  return attention.dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                         impl="xla")


def _check(fn, q, k, v, seg, weights, atol=2e-5):
  np.testing.assert_allclose(fn(q, k, v, seg), _reference(q, k, v, seg), atol=atol, rtol=1e-5)
  grads = lambda f: jax.grad(lambda *a: jnp.sum(f(*a, seg) * weights), argnums=(0, 1, 2))(q, k, v)
  for got, want, name in zip(grads(fn), grads(_reference), "qkv"):
    np.testing.assert_allclose(got, want, atol=10 * atol, rtol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("t,heads,kv_heads,d", [
    (64, 4, 4, 32),  # whole 16-row blocks
    (50, 6, 2, 16),  # a ragged last block; grouped-query heads
    (37, 4, 1, 64),  # one key/value head for all
    (19, 2, 2, 128),
])
def test_matches_reference(t, heads, kv_heads, d):
  q, k, v, seg, weights = _inputs(np.random.default_rng(t), 3, t, heads, kv_heads, d)
  _check(jax.jit(cpu_attention.cpu_causal_attention), q, k, v, seg, weights)


def test_bfloat16_inputs_are_computed_in_float32():
  q, k, v, seg, _ = _inputs(np.random.default_rng(1), 3, 40, 4, 2, 32)
  bf = lambda x: x.astype(jnp.bfloat16)
  got = cpu_attention.cpu_causal_attention(bf(q), bf(k), bf(v), seg)
  assert got.dtype == jnp.bfloat16
  want = _reference(*(bf(x).astype(jnp.float32) for x in (q, k, v)), seg)
  np.testing.assert_allclose(got.astype(jnp.float32), want, atol=2e-2)


def test_sharded_over_a_mesh_matches_one_device():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  q, k, v, seg, weights = _inputs(np.random.default_rng(2), 4, 48, 4, 2, 32)

  def loss(q, k, v):
    out = attention.dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                                          impl="cpu_fused")
    return jnp.sum(out * weights)

  with sharding.activation_sharding(mesh):
    jaxpr = str(jax.make_jaxpr(loss)(q, k, v))
    assert "shard_map" in jaxpr and "unimodal_cpu_attention_fwd" in jaxpr
    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
  want = jax.value_and_grad(lambda *a: jnp.sum(_reference(*a, seg) * weights),
                            argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=2e-4, rtol=1e-4)


def test_auto_picks_the_kernel_for_training_and_xla_for_decoding():
  q, k, v, seg, _ = _inputs(np.random.default_rng(3), 3, 16, 2, 2, 16)
  auto = lambda q, q_offset=0, s=seg: attention.dot_product_attention(
      q, k, v, q_segment_ids=s, kv_segment_ids=seg, q_offset=q_offset, impl="auto")
  assert "unimodal_cpu_attention_fwd" in str(jax.make_jaxpr(auto)(q))
  # Decoding one query against the cache: not training-shaped, so the plain reference.
  assert "unimodal_cpu_attention" not in str(jax.make_jaxpr(
      lambda q: auto(q, 15, seg[:, -1:]))(q[:, -1:]))
  with pytest.raises(ValueError, match="cpu_fused.*KV-cache"):
    attention.dot_product_attention(q[:, :1], k, v, q_segment_ids=seg[:, :1],
                                    kv_segment_ids=seg, q_offset=3, impl="cpu_fused")
  # A head_dim the kernels do not take goes to the blockwise XLA path.
  odd = jnp.zeros((1, 8, 2, 8))
  ones = jnp.ones((1, 8), jnp.int32)
  assert "unimodal_cpu_attention" not in str(jax.make_jaxpr(
      lambda x: attention.dot_product_attention(x, x, x, q_segment_ids=ones,
                                                kv_segment_ids=ones))(odd))


def test_bad_shapes_are_named():
  q, k, v, seg, _ = _inputs(np.random.default_rng(4), 3, 16, 4, 2, 32)
  with pytest.raises(ValueError, match="K dividing N and D in"):
    cpu_attention.cpu_causal_attention(q[..., :24], k[..., :24], v[..., :24], seg)
  with pytest.raises(ValueError, match="K dividing N"):
    cpu_attention.cpu_causal_attention(q[:, :, :3], k, v, seg)
  with pytest.raises(ValueError, match=r"segment_ids \(3, 15\)"):
    cpu_attention.cpu_causal_attention(q, k, v, seg[:, :15])


def test_without_a_compiler_it_falls_back_to_the_xla_path(tmp_path):
  # A fresh process, an empty kernel cache and no compiler: available() is False with a warning,
  # and 'auto' attention still runs (blockwise) and matches the reference.
  code = """
import jax, jax.numpy as jnp
from unimodal_jax.kernels import cpu_attention
from unimodal_jax.models import attention
assert not cpu_attention.available()
q = jnp.ones((1, 8, 2, 16)); s = jnp.ones((1, 8), jnp.int32)
f = lambda x: attention.dot_product_attention(x, x, x, q_segment_ids=s, kv_segment_ids=s)
assert "unimodal_cpu_attention" not in str(jax.make_jaxpr(f)(q))
print(float(f(q).sum()))
"""
  env = {"UNIMODAL_KERNEL_CACHE": str(tmp_path), "CXX": "no-such-compiler", "PATH": "/usr/bin:/bin",
         "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "fused CPU attention unavailable" in done.stderr
  assert "no C++ compiler 'no-such-compiler'" in done.stderr
  assert float(done.stdout.split()[-1]) == pytest.approx(256.0)
