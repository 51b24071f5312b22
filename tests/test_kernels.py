"""Pallas kernels against their references, on CPU.

The Pallas kernels run in interpret mode here (interpret=True: the generic interpreter;
pltpu.InterpretParams: the TPU simulator, which fills fresh buffers with NaN). Shapes are awkward
on purpose (lengths and token counts off the block multiples) so padding is exercised. Inputs are
fresh random draws, seeded per case so a failure reproduces. One test compiles the Mosaic kernels
for a v5e:2x2 TPU through jax.shard_map; one lowers the Triton (GPU) kernels. Nothing here runs on
a TPU or GPU.
"""
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unimodal_jax.kernels import flash_attention, vq_lookup
from unimodal_jax.kernels.flash_attention import FlashBlockSizes, flash_attention_reference
from unimodal_jax.kernels.flash_attention import flash_attention_sharded
from unimodal_jax.kernels.vq_lookup import VQBlockSizes, vq_lookup_reference, vq_lookup_sharded

# Small tiles so a small problem spans several of them.
VQ_SMALL = VQBlockSizes(block_tokens=128, block_codes=128, gpu_block_tokens=32,
                        gpu_block_codes=64, chunk_tokens=96, chunk_codes=160)
FA_SMALL = FlashBlockSizes(block_q=128, block_kv=128, block_q_bwd=128, block_kv_bwd=128,
                           gpu_block_q=32, gpu_block_kv=64)


def _rng(*case):
  return np.random.default_rng(zlib.crc32(repr(case).encode()))


def _as_np(a):
  return np.asarray(jnp.asarray(a, jnp.float32), np.float64)


# ---------------------------------------------------------------------------------------------
# vq_lookup


def _vq_inputs(n, k, d, dtype, seed_case):
  rng = _rng(*seed_case)
  x = jnp.asarray(rng.standard_normal((n, d)), dtype)
  # Codes off the origin, so a zero (padded) code would beat most real ones if it could win.
  codebook = jnp.asarray(rng.standard_normal((k, d)) + 1.5, dtype)
  return x, codebook


def _exact_distances(x, codebook, metric):
  """float64 [N, K] on the same (possibly bf16-rounded) inputs."""
  x, c = _as_np(x), _as_np(codebook)
  if metric == "l2":
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  xu = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
  cu = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-6)
  return 1.0 - xu @ cu.T


def _check_vq(x, codebook, metric, idx, dist, tol):
  idx, dist = np.asarray(idx), np.asarray(dist)
  n, k = x.shape[0], codebook.shape[0]
  assert idx.shape == (n,) and idx.dtype == np.int32 and dist.shape == (n,)
  assert dist.dtype == np.float32
  assert ((0 <= idx) & (idx < k)).all()
  exact = _exact_distances(x, codebook, metric)
  best = exact.min(1)
  scale = max(1.0, float(np.abs(best).max()))
  # The chosen code is nearest up to rounding (near-ties may go either way)...
  chosen = exact[np.arange(n), idx]
  assert (chosen <= best + tol * scale).all(), np.abs(chosen - best).max()
  # ...its reported distance is right...
  np.testing.assert_allclose(dist, chosen, atol=tol * scale, rtol=0)
  # ...and the choice is the reference's almost everywhere.
  ref_idx, ref_dist = vq_lookup_reference(x, codebook, metric=metric)
  assert np.mean(idx == np.asarray(ref_idx)) > 0.98
  np.testing.assert_allclose(dist, np.asarray(ref_dist), atol=tol * scale, rtol=0)


def _vq_tol(metric, dtype):
  # l2 on bf16 inputs is exact products + f32 sums, like f32; cosine rounds unit vectors to bf16.
  return 2e-2 if (metric == "cosine" and dtype == jnp.bfloat16) else 2e-5


VQ_CASES = [  # n, k, d, dtype, metric
    (300, 1000, 24, jnp.float32, "l2"),
    (77, 515, 256, jnp.bfloat16, "cosine"),
    (130, 333, 8, jnp.bfloat16, "l2"),
    (1, 5, 40, jnp.float32, "cosine"),
]


@pytest.mark.parametrize("n,k,d,dtype,metric", VQ_CASES)
def test_vq_xla_chunked_matches_reference(n, k, d, dtype, metric):
  x, codebook = _vq_inputs(n, k, d, dtype, ("xla", n, k, d, metric))
  idx, dist = jax.jit(lambda a, b: vq_lookup(a, b, metric=metric, impl="xla",
                                             block_sizes=VQ_SMALL))(x, codebook)
  _check_vq(x, codebook, metric, idx, dist, _vq_tol(metric, dtype))


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("n,k,d,dtype,metric", VQ_CASES)
def test_vq_pallas_interpret_matches_reference(n, k, d, dtype, metric, platform):
  x, codebook = _vq_inputs(n, k, d, dtype, ("pallas", n, k, d, metric))
  idx, dist = jax.jit(lambda a, b: vq_lookup(a, b, metric=metric, impl="pallas", interpret=True,
                                             block_sizes=VQ_SMALL, platform=platform))(x, codebook)
  _check_vq(x, codebook, metric, idx, dist, _vq_tol(metric, dtype))


@pytest.mark.parametrize("impl,platform", [("xla", None), ("pallas", "tpu")])
def test_vq_16k_codes(impl, platform):
  """The tokenizer's codebook size, default tiles: 32 code blocks per token block."""
  x, codebook = _vq_inputs(300, 16384, 8, jnp.float32, ("16k",))
  idx, dist = jax.jit(lambda a, b: vq_lookup(a, b, impl=impl, interpret=True,
                                             platform=platform))(x, codebook)
  _check_vq(x, codebook, "l2", idx, dist, 2e-5)


def test_vq_tpu_simulator():
  """The TPU interpreter: NaN-filled fresh buffers, so an unset scratch would show."""
  x, codebook = _vq_inputs(200, 300, 16, jnp.float32, ("sim",))
  idx, dist = vq_lookup(x, codebook, impl="pallas", interpret=pltpu.InterpretParams(),
                        block_sizes=VQ_SMALL)
  _check_vq(x, codebook, "l2", idx, dist, 2e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vq_ties_go_to_the_lowest_index(metric):
  """Integer-valued data makes l2 arithmetic exact, so ties are exact ties; every code appears 3
  times, 100 apart (other tiles and chunks), and copies of a code must lose to the first."""
  rng = _rng("ties", metric)
  base = rng.integers(-2, 3, (100, 8))
  codebook = jnp.asarray(np.concatenate([base, base, base]), jnp.float32)
  x = jnp.asarray(np.concatenate([rng.integers(-2, 3, (150, 8)), base[:50]]), jnp.float32)
  ref_idx, ref_dist = vq_lookup_reference(x, codebook, metric=metric)
  assert (np.asarray(ref_idx) < 100).all()
  for impl, platform in (("xla", None), ("pallas", "tpu"), ("pallas", "gpu")):
    idx, dist = vq_lookup(x, codebook, metric=metric, impl=impl, interpret=True,
                          platform=platform, block_sizes=VQ_SMALL)
    if metric == "l2":  # exact: the very same answer
      np.testing.assert_array_equal(np.asarray(idx), np.asarray(ref_idx), err_msg=impl)
      np.testing.assert_array_equal(np.asarray(dist), np.asarray(ref_dist), err_msg=impl)
    assert (np.asarray(idx) < 100).all(), (impl, platform)
    _check_vq(x, codebook, metric, idx, dist, 2e-5)


def test_vq_dispatch_on_cpu():
  x, codebook = _vq_inputs(50, 70, 8, jnp.float32, ("dispatch",))
  auto = vq_lookup(x, codebook)
  xla = vq_lookup(x, codebook, impl="xla")
  np.testing.assert_array_equal(np.asarray(auto[0]), np.asarray(xla[0]))
  with pytest.raises(ValueError, match="interpret"):
    vq_lookup(x, codebook, impl="pallas")
  with pytest.raises(ValueError, match="metric"):
    vq_lookup(x, codebook, metric="dot")
  with pytest.raises(ValueError, match="multiple of 128"):
    VQBlockSizes(block_tokens=100)


def test_vq_sharded_tokens_on_cpu_mesh():
  """shard_map over the 8 virtual CPU devices, kernels interpreted per shard."""
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  x, codebook = _vq_inputs(4 * 70, 200, 16, jnp.float32, ("sharded",))
  x = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  idx, dist = jax.jit(lambda a, b: vq_lookup_sharded(a, b, mesh, "data", impl="pallas",
                                                     interpret=True, platform="tpu",
                                                     block_sizes=VQ_SMALL))(x, codebook)
  _check_vq(x, codebook, "l2", idx, dist, 2e-5)


# ---------------------------------------------------------------------------------------------
# flash_attention


def _segments(rng, b, length, n_segments):
  """n_segments packed documents (ids 1..n) then a padding tail (id 0) in each row."""
  ids = np.zeros((b, length), np.int32)
  for r in range(b):
    cuts = np.sort(rng.choice(np.arange(1, length), n_segments, replace=False))
    ids[r] = np.searchsorted(cuts, np.arange(length), side="right") + 1
    ids[r, cuts[-1]:] = 0
  return jnp.asarray(ids)


def _fwd_bwd(fn, q, k, v, do):
  @jax.jit
  def run(q, k, v, do):
    o, vjp = jax.vjp(fn, q, k, v)
    return (o,) + vjp(do)
  return run(q, k, v, do)


def _check_attention(b, length, heads, kv_heads, d, causal, n_segments, dtype, *, platform,
                     interpret=True, block_sizes=FA_SMALL, kv_length=None):
  rng = _rng(b, length, heads, kv_heads, d, causal, n_segments, str(dtype), platform)
  kv_length = kv_length or length

  def draw(*shape):
    return jnp.asarray(rng.standard_normal(shape), dtype)
  q, k, v = draw(b, length, heads, d), draw(b, kv_length, kv_heads, d), draw(b, kv_length,
                                                                             kv_heads, d)
  do = draw(b, length, heads, d)
  seg = _segments(rng, b, length, n_segments) if n_segments else None
  got = _fwd_bwd(lambda q, k, v: flash_attention(
      q, k, v, causal=causal, segment_ids=seg, impl="pallas", interpret=interpret,
      block_sizes=block_sizes, platform=platform), q, k, v, do)
  want = _fwd_bwd(lambda q, k, v: flash_attention_reference(q, k, v, causal=causal,
                                                            segment_ids=seg), q, k, v, do)
  # Like jax's own kernel tests: tight in float32, bf16-rounding-sized in bfloat16; relative to
  # each tensor's scale (gradients grow with the length).
  tol = (1e-5, 5e-5) if dtype == jnp.float32 else (2e-2, 2e-2)
  for name, g, w, t in zip(("o", "dq", "dk", "dv"), got, want, (tol[0],) + (tol[1],) * 3):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    g, w = _as_np(g), _as_np(w)
    assert np.isfinite(g).all(), name
    scale = max(1.0, np.abs(w).max())
    err = np.abs(g - w).max() / scale
    assert err <= t, f"{name}: max error {err:.2e} (scale {scale:.1f}) > {t:.0e}"


ATTENTION_CASES = [  # batch, length, heads, kv_heads, head_dim, causal, segments, dtype
    (2, 300, 4, 2, 64, True, 0, jnp.float32),  # GQA 2, padded length, heads-major layout
    (1, 260, 4, 1, 128, True, 3, jnp.float32),  # GQA 4, [B, L, H*D] layout, packed + padding
    (1, 200, 2, 2, 8, False, 2, jnp.float32),  # no GQA, tiny head_dim, bidirectional segments
    (1, 270, 4, 4, 256, False, 0, jnp.bfloat16),  # big head_dim in bf16
    (2, 140, 8, 2, 32, True, 4, jnp.bfloat16),  # GQA 4, causal + segments in bf16
]


@pytest.mark.parametrize("b,length,heads,kv_heads,d,causal,n_segments,dtype", ATTENTION_CASES)
def test_flash_attention_tpu_kernels_interpret(b, length, heads, kv_heads, d, causal, n_segments,
                                               dtype):
  _check_attention(b, length, heads, kv_heads, d, causal, n_segments, dtype, platform="tpu")


@pytest.mark.parametrize("b,length,heads,kv_heads,d,causal,n_segments,dtype",
                         [ATTENTION_CASES[1], ATTENTION_CASES[2]])
def test_flash_attention_gpu_kernels_interpret(b, length, heads, kv_heads, d, causal, n_segments,
                                               dtype):
  _check_attention(b, length, heads, kv_heads, d, causal, n_segments, dtype, platform="gpu")


def test_flash_attention_gpu_kernels_with_their_own_backward_tiles():
  """Backward tiles unlike the forward's, both ways round (the lengths pad to the larger), and
  other launch parameters: causal skipping, GQA sums and segments stay exact."""
  sizes = FlashBlockSizes(gpu_block_q=64, gpu_block_kv=16, gpu_block_q_bwd=16,
                          gpu_block_kv_bwd=32, gpu_num_warps=8, gpu_num_stages=3,
                          gpu_num_warps_bwd=2, gpu_num_stages_bwd=1)
  _check_attention(1, 100, 4, 2, 16, True, 2, jnp.float32, platform="gpu", block_sizes=sizes)
  with pytest.raises(ValueError, match="gpu_num_warps=3"):
    FlashBlockSizes(gpu_num_warps=3)
  with pytest.raises(ValueError, match="gpu_block_kv_bwd=48"):
    FlashBlockSizes(gpu_block_kv_bwd=48)


def test_flash_attention_tpu_simulator():
  """TPU interpreter (NaN-filled fresh buffers), unequal forward and backward tiles (the
  lengths pad to both), causal skipping on both kernels of the backward."""
  sizes = FlashBlockSizes(block_q=256, block_kv=128, block_q_bwd=128, block_kv_bwd=256)
  _check_attention(1, 300, 2, 1, 64, True, 2, jnp.float32, platform="tpu",
                   interpret=pltpu.InterpretParams(), block_sizes=sizes)


def test_flash_attention_dispatch_on_cpu():
  rng = _rng("dispatch")
  q = jnp.asarray(rng.standard_normal((1, 20, 2, 8)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(flash_attention(q, q, q)),
                                np.asarray(flash_attention_reference(q, q, q)))
  with pytest.raises(ValueError, match="interpret"):
    flash_attention(q, q, q, impl="pallas")
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    flash_attention(q, q[:, :, :1].repeat(3, 2), q[:, :, :1].repeat(3, 2))


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("b,length,heads,kv_heads,d,causal,n_segments,dtype", [
    (1, 513, 4, 4, 128, True, 5, jnp.float32),
    (2, 129, 4, 2, 16, False, 0, jnp.bfloat16),
    (1, 700, 2, 1, 64, True, 0, jnp.bfloat16),
    (1, 333, 8, 2, 256, True, 3, jnp.float32),
])
def test_flash_attention_more_shapes(b, length, heads, kv_heads, d, causal, n_segments, dtype,
                                     platform):
  _check_attention(b, length, heads, kv_heads, d, causal, n_segments, dtype, platform=platform)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_flash_attention_cross_lengths(causal):
  """Queries and keys of different lengths (no segments): causal in slot order, as the
  reference's mask with q_offset 0."""
  _check_attention(1, 150, 4, 2, 32, causal, 0, jnp.float32, platform="tpu", kv_length=300)


# ---------------------------------------------------------------------------------------------
# Compilation for real targets.


def test_gpu_kernels_lower_to_triton():
  """Triton lowering runs in jax on this CPU; compiling to PTX and running needs a GPU."""
  x, codebook = _vq_inputs(300, 1000, 24, jnp.bfloat16, ("triton",))
  text = jax.jit(lambda a, b: vq_lookup(a, b, impl="pallas", platform="gpu")).trace(
      x, codebook).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 1
  q = jnp.zeros((2, 300, 4, 64), jnp.bfloat16)
  kv = jnp.zeros((2, 300, 2, 64), jnp.bfloat16)
  seg = jnp.ones((2, 300), jnp.int32)
  grad = jax.grad(lambda q, k, v: flash_attention(
      q, k, v, segment_ids=seg, impl="pallas", platform="gpu").astype(jnp.float32).sum(),
      argnums=(0, 1, 2))
  text = jax.jit(grad).trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 3  # forward, dk/dv, dq


def test_mosaic_kernels_compile_for_tpu_v5e_2x2():
  """AOT-compile both kernels for a v5e:2x2 slice through jax.shard_map, backward included, and
  check the VQ program holds no token x code matrix."""
  pytest.importorskip("libtpu", reason="AOT TPU compilation needs the libtpu wheel")
  from unimodal_jax import aot
  _, devices = aot.topology_devices("v5e:2x2")

  mesh = Mesh(np.array(devices), ("data",))
  n_local, k, d = 2048, 16384, 64
  x = jax.ShapeDtypeStruct((4 * n_local, d), jnp.bfloat16,
                           sharding=NamedSharding(mesh, P("data", None)))
  codebook = jax.ShapeDtypeStruct((k, d), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  compiled = jax.jit(lambda a, b: vq_lookup_sharded(a, b, mesh, "data")).lower(
      x, codebook).compile()
  assert "tpu_custom_call" in compiled.as_text()
  # A local distance matrix would be 2048 x 16384 x 4 B = 128 MiB.
  assert compiled.memory_analysis().temp_size_in_bytes < 4 * 1024**2

  mesh = Mesh(np.array(devices).reshape(2, 2), ("data", "model"))
  b, length, heads, kv_heads, d = 4, 1000, 8, 4, 64
  qkv_sh = NamedSharding(mesh, P("data", None, "model", None))
  q = jax.ShapeDtypeStruct((b, length, heads, d), jnp.bfloat16, sharding=qkv_sh)
  kv = jax.ShapeDtypeStruct((b, length, kv_heads, d), jnp.bfloat16, sharding=qkv_sh)
  seg = jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=NamedSharding(mesh, P("data")))

  def loss(q, k, v, seg):
    o = flash_attention_sharded(q, k, v, mesh, batch_axes="data", head_axes="model",
                                segment_ids=seg)
    return o.astype(jnp.float32).sum()
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, seg).compile()
  assert compiled.as_text().count("tpu_custom_call") == 3  # forward, dk/dv, dq
