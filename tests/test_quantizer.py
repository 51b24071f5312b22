"""Vector quantizer: the chunked nearest-code search, straight-through gradients, losses, cosine
codes, EMA updates and dead-code restarts, SimVQ, usage/perplexity, and a tiny training run where
plain VQ leaves codes unused and SimVQ / restarts do not."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from unimodal_jax.models.quantizer import (STATS, QuantizerConfig, VectorQuantizer,
                                           code_statistics, nearest_codes)


def _init(cfg, x, seed=0):
  model = VectorQuantizer(cfg)
  init = jax.jit(lambda key, x: model.init(key, x, train=False))
  return model, nn.meta.unbox(init(jax.random.key(seed), x))


@functools.lru_cache(maxsize=None)
def _jitted_apply(model, static):
  return jax.jit(lambda v, a, r: model.apply(v, *a, rngs=r, **dict(static)))


def _apply(model, variables, *args, rngs=None, **static):
  """model.apply under jit, compiled once per module and options: eager Flax dispatches and
  compiles op by op, which is slow on a busy CPU."""
  static = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in static.items()))
  return _jitted_apply(model, static)(variables, args, rngs)


def _np_nearest(x, c, metric):
  x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
  if metric == "cosine":
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    d = 1.0 - x @ c.T
  else:
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  return d


# ---------------------------------------------------------------------------- nearest_codes

@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n,k,d,chunk", [(1037, 263, 19, 128), (5, 7, 3, 1024), (300, 1, 4, 64)])
def test_nearest_codes_matches_naive_argmin(metric, n, k, d, chunk):
  kx, kc = jax.random.split(jax.random.key(n + k))
  x = jax.random.normal(kx, (n, d)) * 2.0 + 0.5
  c = jax.random.normal(kc, (k, d))
  idx, dist = jax.jit(lambda x, c: nearest_codes(x, c, metric, chunk_size=chunk))(x, c)
  assert idx.dtype == jnp.int32 and idx.shape == (n,) and dist.shape == (n,)
  ref = _np_nearest(x, c, metric)
  np.testing.assert_array_equal(np.asarray(idx), ref.argmin(-1))
  np.testing.assert_allclose(np.asarray(dist), ref.min(-1), rtol=1e-4, atol=1e-4)
  # The chunking is invisible: one chunk and odd-sized chunks agree.
  for other in (7, n):
    idx2, dist2 = jax.jit(lambda x, c: nearest_codes(x, c, metric, chunk_size=other))(x, c)
    np.testing.assert_array_equal(np.asarray(idx2), np.asarray(idx))
    np.testing.assert_allclose(np.asarray(dist2), np.asarray(dist), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_codes_ties_go_to_lowest_index(metric):
  a = np.array([1.0, 2.0, -0.5], np.float32)
  b = np.array([-1.0, 0.25, 3.0], np.float32)
  codebook = jnp.asarray(np.stack([-a, a, b, a, b, a]))  # a at 1, 3, 5; b at 2, 4
  x = jnp.asarray(np.stack([a, b] * 50))  # 100 tokens, several chunks
  idx, _ = jax.jit(lambda x, c: nearest_codes(x, c, metric, chunk_size=16))(x, codebook)
  np.testing.assert_array_equal(np.asarray(idx), np.array([1, 2] * 50))
  # Equidistant, non-identical codes: the origin is as far from every unit axis vector.
  axes = jnp.asarray(np.concatenate([np.eye(3), -np.eye(3)])[::-1].copy(), jnp.float32)
  idx, dist = jax.jit(nearest_codes, static_argnums=2)(jnp.zeros((3, 3)), axes, "l2")
  np.testing.assert_array_equal(np.asarray(idx), [0, 0, 0])
  np.testing.assert_allclose(np.asarray(dist), [1.0, 1.0, 1.0])


def test_nearest_codes_memory_is_bounded():
  """The compiled search holds a chunk x K buffer, not the N x K distance matrix."""
  n, k, d, chunk = 32768, 8192, 16, 512
  full_matrix = n * k * 4  # 1 GiB of float32
  xs = jax.ShapeDtypeStruct((n, d), jnp.float32)
  cs = jax.ShapeDtypeStruct((k, d), jnp.float32)
  naive = jax.jit(lambda x, c: jnp.argmin(jnp.sum(c * c, -1) - 2 * x @ c.T, -1)).lower(xs, cs)
  # The measurement sees the matrix when it is there.
  assert naive.compile().memory_analysis().temp_size_in_bytes >= full_matrix
  for metric in ("l2", "cosine"):
    compiled = jax.jit(lambda x, c: nearest_codes(x, c, metric, chunk_size=chunk)).lower(
        xs, cs).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < full_matrix / 16, (metric, temp)
    assert temp < 4 * chunk * k * 4 + 4 * (n + k) * d * 4, (metric, temp)


def test_module_memory_is_bounded():
  """Forward + backward + EMA update + restarts of the whole module: no N x K buffer either."""
  n, k, d = 32768, 8192, 16
  cfg = QuantizerConfig(codebook_size=k, dim=d, chunk_size=512, ema_decay=0.99,
                        dead_code_threshold=0.1)
  model = VectorQuantizer(cfg)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((2, d)), train=False)))

  def step(variables, x):
    def loss(x):
      (q, _, aux), updates = model.apply(variables, x, train=True, mutable=[STATS])
      return jnp.sum(q) + aux["loss"], updates
    return jax.grad(loss, has_aux=True)(x)

  compiled = jax.jit(step).lower(abstract, jax.ShapeDtypeStruct((n, d), jnp.float32)).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < n * k * 4 / 16


# ---------------------------------------------------------------------------- the module

def test_straight_through_gradient_is_identity():
  cfg = QuantizerConfig(codebook_size=11, dim=5)
  x = jax.random.normal(jax.random.key(1), (3, 5))
  model, variables = _init(cfg, x)
  quantize = lambda x: _apply(model, variables, x, train=False)[0]
  jac = jax.jit(jax.jacrev(quantize))(x)  # [3, 5, 3, 5]
  np.testing.assert_allclose(np.asarray(jac).reshape(15, 15), np.eye(15), atol=1e-6)
  # ... while the forward value is the chosen code itself.
  q, idx, _ = _apply(model, variables, x, train=False)
  codebook = variables["params"]["codebook"]
  np.testing.assert_allclose(np.asarray(q), np.asarray(codebook)[np.asarray(idx)], atol=1e-6)


def test_losses_values_and_stop_gradients():
  beta, gamma = 0.3, 0.7
  cfg = QuantizerConfig(codebook_size=9, dim=4, commitment_weight=beta, codebook_loss_weight=gamma)
  x = jax.random.normal(jax.random.key(2), (2, 6, 4)) * 1.5
  model, variables = _init(cfg, x)
  _, idx, aux = _apply(model, variables, x, train=False)
  codebook = np.asarray(variables["params"]["codebook"], np.float64)
  xn = np.asarray(x, np.float64).reshape(-1, 4)
  sq = np.sum((xn - codebook[np.asarray(idx).reshape(-1)]) ** 2, axis=-1)
  np.testing.assert_allclose(float(aux["commitment_loss"]), beta * sq.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["codebook_loss"]), gamma * sq.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss"]), (beta + gamma) * sq.mean(), rtol=1e-5)

  def term(name):
    return lambda p, x: model.apply({"params": p}, x, train=False)[2][name]
  grad = lambda name: jax.jit(jax.grad(term(name), argnums=(0, 1)))(variables["params"], x)
  g_commit_p, g_commit_x = grad("commitment_loss")
  g_book_p, g_book_x = grad("codebook_loss")
  # Commitment moves only the encoder output; the codebook loss moves only the codes.
  assert not np.any(np.asarray(g_commit_p["codebook"]))
  assert not np.any(np.asarray(g_book_x))
  assert np.any(np.asarray(g_commit_x)) and np.any(np.asarray(g_book_p["codebook"]))


def test_cosine_mode_returns_unit_norm_codes():
  cfg = QuantizerConfig(codebook_size=13, dim=6, l2_normalized=True)
  x = jax.random.normal(jax.random.key(3), (4, 5, 6)) * 7.0
  model, variables = _init(cfg, x)
  q, idx, aux = _apply(model, variables, x, train=False)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(q), axis=-1), 1.0, atol=1e-5)
  codes = np.asarray(_apply(model, variables, method=VectorQuantizer.codes))
  np.testing.assert_allclose(np.linalg.norm(codes, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(q), codes[np.asarray(idx)], atol=1e-5)
  looked_up = _apply(model, variables, idx, method=VectorQuantizer.lookup)
  np.testing.assert_allclose(np.asarray(looked_up), np.asarray(q), atol=1e-5)
  # The commitment loss is measured between unit vectors: scaling x changes nothing.
  aux2 = _apply(model, variables, x * 0.01, train=False)[2]
  np.testing.assert_allclose(float(aux2["commitment_loss"]), float(aux["commitment_loss"]),
                             rtol=1e-5)


def test_ema_update_equals_numpy_step():
  k, d, decay, eps = 4, 3, 0.9, 1e-5
  cfg = QuantizerConfig(codebook_size=k, dim=d, ema_decay=decay, ema_epsilon=eps, init_scale=0.5)
  x = jax.random.normal(jax.random.key(4), (6, d))
  model, variables = _init(cfg, x)
  assert "params" not in variables  # the EMA codebook gets no gradient and no optimizer
  stats = jax.tree.map(np.asarray, variables[STATS])

  (q, idx, aux), updates = _apply(model, variables, x, train=True, mutable=[STATS])
  assert "codebook_loss" not in aux and int(aux["num_restarted"]) == 0
  idx = np.asarray(idx)
  xn = np.asarray(x, np.float64)
  counts = np.bincount(idx, minlength=k).astype(np.float64)
  sums = np.zeros((k, d))
  np.add.at(sums, idx, xn)
  cluster = decay * stats["cluster_size"] + (1 - decay) * counts
  embed_sum = decay * stats["embed_sum"] + (1 - decay) * sums
  total = cluster.sum()
  codebook = embed_sum / ((cluster + eps) / (total + k * eps) * total)[:, None]
  new = nn.meta.unbox(updates[STATS])
  np.testing.assert_allclose(np.asarray(new["cluster_size"]), cluster, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["embed_sum"]), embed_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new["codebook"]), codebook, rtol=1e-5, atol=1e-6)
  assert int(new["steps"]) == 1
  # The output of this call used the codebook from before the update.
  np.testing.assert_allclose(np.asarray(q), stats["codebook"][idx], atol=1e-6)

  # Eval: stats not mutable (or train=False) -> same answer, nothing updated, no error.
  q_eval, idx_eval, _ = _apply(model, variables, x, train=True)
  np.testing.assert_array_equal(np.asarray(idx_eval), idx)
  _, no_update = _apply(model, variables, x, train=False, mutable=[STATS])
  for name, value in nn.meta.unbox(no_update[STATS]).items():
    np.testing.assert_array_equal(np.asarray(value), stats[name])


def test_dead_codes_are_restarted_to_batch_vectors_and_usage_rises():
  k, d = 16, 4
  cfg = QuantizerConfig(codebook_size=k, dim=d, ema_decay=0.5, dead_code_threshold=0.9)
  x = jax.random.normal(jax.random.key(5), (64, d))
  model, variables = _init(cfg, x)
  # Every code but code 0 far away: the whole batch picks code 0.
  stale = np.full((k, d), 100.0, np.float32)
  stale[0] = 0.0
  variables = {STATS: dict(variables[STATS], codebook=jnp.asarray(stale),
                           embed_sum=jnp.asarray(stale))}
  _, _, aux = _apply(model, variables, x, train=False)
  assert float(aux["usage"]) == 1 / k

  def train_step(variables, key):
    (_, _, aux), updates = _apply(model, variables, x, train=True, mutable=[STATS],
                                       rngs={"vq": key})
    return {STATS: nn.meta.unbox(updates[STATS])}, aux

  after, aux = train_step(variables, jax.random.key(0))
  assert int(aux["num_restarted"]) == k - 1
  codes = np.asarray(after[STATS]["codebook"])
  batch = np.asarray(x)
  for row in codes[1:]:  # every restarted code is one of this batch's vectors
    assert np.min(np.abs(batch - row).sum(-1)) == 0.0
  assert len({tuple(r) for r in codes[1:]}) == k - 1  # distinct vectors: no ties among them
  np.testing.assert_array_equal(np.asarray(after[STATS]["cluster_size"])[1:], np.float32(0.9))
  _, _, aux = _apply(model, after, x, train=False)
  assert float(aux["usage"]) > 0.5

  # Deterministic from the rng; another rng picks other vectors.
  again, _ = train_step(variables, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(again[STATS]["codebook"]), codes)
  other, _ = train_step(variables, jax.random.key(1))
  assert not np.array_equal(np.asarray(other[STATS]["codebook"]), codes)
  # Without a 'vq' rng the step counter seeds the draw: still deterministic.
  (_, _, aux1), u1 = _apply(model, variables, x, train=True, mutable=[STATS])
  (_, _, aux2), u2 = _apply(model, variables, x, train=True, mutable=[STATS])
  assert int(aux1["num_restarted"]) == k - 1
  np.testing.assert_array_equal(np.asarray(nn.meta.unbox(u1[STATS])["codebook"]),
                                np.asarray(nn.meta.unbox(u2[STATS])["codebook"]))


def test_first_update_restarts_the_random_codes_nobody_picked():
  # A fresh EMA codebook with restarts: the codes no token picks in the first update are dead at
  # once (their sizes start at the threshold), not after log(threshold) / log(decay) updates.
  k, d, threshold = 64, 4, 0.05
  cfg = QuantizerConfig(codebook_size=k, dim=d, ema_decay=0.99, dead_code_threshold=threshold)
  x = jax.random.normal(jax.random.key(8), (256, d)) + 5.0  # far from the N(0, 1) initial codes
  model, variables = _init(cfg, x)
  stats = variables[STATS]
  np.testing.assert_array_equal(np.asarray(stats["cluster_size"]), np.float32(threshold))
  np.testing.assert_allclose(np.asarray(stats["embed_sum"]) / threshold,
                             np.asarray(stats["codebook"]), rtol=1e-6)
  _, picked, aux = _apply(model, variables, x, train=False)
  unpicked = k - len(np.unique(np.asarray(picked)))
  assert float(aux["usage"]) < 0.5
  (_, _, aux), updates = _apply(model, variables, x, train=True, mutable=[STATS],
                                rngs={"vq": jax.random.key(0)})
  assert int(aux["num_restarted"]) == unpicked
  _, _, aux = _apply(model, {STATS: nn.meta.unbox(updates[STATS])}, x, train=False)
  assert float(aux["usage"]) > 0.9
  # Without restarts the sizes start at one token per code, as before.
  plain = QuantizerConfig(codebook_size=k, dim=d, ema_decay=0.99)
  np.testing.assert_array_equal(np.asarray(_init(plain, x)[1][STATS]["cluster_size"]), 1.0)


def test_simvq_gradient_step_moves_every_code_but_not_the_frozen_basis():
  k, d = 32, 6
  cfg = QuantizerConfig(codebook_size=k, dim=d, simvq=True)
  x = jax.random.normal(jax.random.key(6), (2, d)) + 3.0  # two tokens: at most two codes chosen
  model, variables = _init(cfg, x)
  assert set(variables["params"]) == {"proj_kernel", "proj_bias"}
  basis = np.asarray(variables[STATS]["frozen_codebook"])
  codes_before = np.asarray(_apply(model, variables, method=VectorQuantizer.codes))
  np.testing.assert_allclose(codes_before, basis, atol=1e-6)  # W = I, b = 0 at init

  def loss(params):
    (_, idx, aux), updates = model.apply({"params": params, STATS: variables[STATS]}, x,
                                         train=True, mutable=[STATS])
    return aux["loss"], (idx, updates)
  grads, (idx, updates) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert len(set(np.asarray(idx).tolist())) <= 2
  params = optax.apply_updates(variables["params"], jax.tree.map(lambda g: -0.1 * g, grads))
  new_vars = {"params": params, STATS: nn.meta.unbox(updates[STATS])}
  codes_after = np.asarray(_apply(model, new_vars, method=VectorQuantizer.codes))
  moved = np.linalg.norm(codes_after - codes_before, axis=-1)
  assert np.all(moved > 1e-4), moved  # all 32 codes moved, from a gradient through 2 of them
  np.testing.assert_array_equal(np.asarray(new_vars[STATS]["frozen_codebook"]), basis)
  # lookup projects only the rows it needs and agrees with the full codebook.
  ids = jnp.arange(k).reshape(4, 8)
  looked_up = _apply(model, new_vars, ids, method=VectorQuantizer.lookup)
  np.testing.assert_allclose(np.asarray(looked_up).reshape(k, d), codes_after, atol=1e-5)


def test_usage_and_perplexity_equal_numpy():
  k = 10
  idx = jnp.asarray([0, 0, 0, 3, 3, 7, 9, 9, 9, 9, 2], jnp.int32)
  stats = jax.jit(code_statistics, static_argnums=1)
  counts, usage, perplexity = stats(idx, k)
  c = np.bincount(np.asarray(idx), minlength=k).astype(np.float64)
  p = c / c.sum()
  nz = p[p > 0]
  np.testing.assert_array_equal(np.asarray(counts), c)
  np.testing.assert_allclose(float(usage), 5 / 10)
  np.testing.assert_allclose(float(perplexity), np.exp(-(nz * np.log(nz)).sum()), rtol=1e-6)
  # Extremes: one code -> perplexity 1; all codes equally -> K.
  np.testing.assert_allclose(float(stats(jnp.zeros(11, jnp.int32), k)[2]), 1.0)
  np.testing.assert_allclose(float(stats(jnp.arange(2 * k) % k, k)[2]), k, rtol=1e-5)

  cfg = QuantizerConfig(codebook_size=12, dim=3)
  x = jax.random.normal(jax.random.key(7), (5, 9, 3))
  model, variables = _init(cfg, x)
  _, ids, aux = _apply(model, variables, x, train=False)
  c = np.bincount(np.asarray(ids).reshape(-1), minlength=12) / ids.size
  nz = c[c > 0]
  np.testing.assert_allclose(float(aux["usage"]), np.mean(c > 0))
  np.testing.assert_allclose(float(aux["perplexity"]), np.exp(-(nz * np.log(nz)).sum()), rtol=1e-5)


def test_jit_matches_eager_and_lookup_matches_quantized():
  for cfg in (QuantizerConfig(codebook_size=20, dim=8, chunk_size=16, simvq=True,
                              l2_normalized=True),
              QuantizerConfig(codebook_size=20, dim=8, chunk_size=16, ema_decay=0.9,
                              dead_code_threshold=0.95)):
    x = jax.random.normal(jax.random.key(8), (3, 7, 8))
    model, variables = _init(cfg, x)
    # Eager (op-by-op) forward in one search chunk against the jitted one in chunks of 16. The
    # jitted training-mode update is checked against numpy in test_ema_update_equals_numpy_step
    # (eager EMA updates take seconds to dispatch on CPU).
    eager = VectorQuantizer(cfg.replace(chunk_size=1024))
    qe, idxe, auxe = eager.apply(variables, x, train=False)
    f = lambda v, x: model.apply(v, x, train=True, mutable=[STATS], rngs={"vq": jax.random.key(0)})
    (q, idx, aux), upd = jax.jit(f)(variables, x)
    np.testing.assert_array_equal(np.asarray(idxe), np.asarray(idx))
    np.testing.assert_allclose(np.asarray(qe), np.asarray(q), atol=1e-6)
    for name in ("commitment_loss", "usage", "perplexity"):
      np.testing.assert_allclose(float(auxe[name]), float(aux[name]), rtol=1e-5)
    if cfg.ema_decay is not None:
      assert int(aux["num_restarted"]) > 0 and int(nn.meta.unbox(upd)[STATS]["steps"]) == 1
    lookup = jax.jit(lambda v, i: model.apply(v, i, method=VectorQuantizer.lookup))
    np.testing.assert_allclose(np.asarray(lookup(variables, idx)), np.asarray(q), atol=1e-5)
    assert q.shape == x.shape and idx.shape == x.shape[:-1] and idx.dtype == jnp.int32


def test_dtypes():
  cfg = QuantizerConfig(codebook_size=20, dim=8, dtype="bfloat16", param_dtype="bfloat16")
  x = jax.random.normal(jax.random.key(9), (4, 8), jnp.bfloat16)
  model, variables = _init(cfg, x)
  assert variables["params"]["codebook"].dtype == jnp.bfloat16
  q, idx, aux = _apply(model, variables, x, train=False)
  assert q.dtype == jnp.bfloat16 and aux["loss"].dtype == jnp.float32
  ema = QuantizerConfig(codebook_size=20, dim=8, ema_decay=0.9, param_dtype="bfloat16")
  _, variables = _init(ema, x)
  assert all(v.dtype in (jnp.float32, jnp.int32) for v in jax.tree.leaves(variables))


def test_logical_axis_names():
  x = jnp.zeros((2, 8))
  specs = lambda cfg: nn.get_partition_spec(jax.eval_shape(
      lambda: VectorQuantizer(cfg).init(jax.random.key(0), x, train=False)))
  assert specs(QuantizerConfig(codebook_size=16, dim=8)) == {
      "params": {"codebook": P("codebook", "embed")}}
  assert specs(QuantizerConfig(codebook_size=16, dim=8, simvq=True)) == {
      "params": {"proj_kernel": P(None, "embed"), "proj_bias": P("embed")},
      STATS: {"frozen_codebook": P("codebook", "embed")}}
  assert specs(QuantizerConfig(codebook_size=16, dim=8, ema_decay=0.99)) == {
      STATS: {"codebook": P("codebook", "embed"), "cluster_size": P("codebook"),
              "embed_sum": P("codebook", "embed"), "steps": P()}}


def test_config_errors():
  with pytest.raises(ValueError, match="simvq"):
    QuantizerConfig(codebook_size=4, dim=2, simvq=True, ema_decay=0.99)
  with pytest.raises(ValueError, match="ema_decay"):
    QuantizerConfig(codebook_size=4, dim=2, dead_code_threshold=1.0)
  with pytest.raises(ValueError, match="unknown quantizer config"):
    QuantizerConfig.from_dict({"codebook_size": 4, "dim": 2, "beta": 0.25})
  with pytest.raises(ValueError, match="metric"):
    nearest_codes(jnp.zeros((2, 2)), jnp.zeros((3, 2)), "dot")
  cfg = QuantizerConfig(codebook_size=4, dim=2, ema_decay=0.5)
  assert QuantizerConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="feature size"):
    _init(cfg, jnp.zeros((3, 5)))
  model, variables = _init(cfg.replace(ema_decay=None, simvq=True), jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="vq_stats"):
    model.apply({"params": variables["params"]}, jnp.zeros((3, 2)), train=False)


# ---------------------------------------------------------------------------- training

_CENTERS = np.random.default_rng(0).normal(0.0, 1.0, (4, 8)) + 3.0


def _mixture(key, n):
  """A mixture of 4 Gaussians in 8-d, offset from the origin the codes start around."""
  k1, k2 = jax.random.split(key)
  which = jax.random.randint(k1, (n,), 0, len(_CENTERS))
  return jnp.asarray(_CENTERS, jnp.float32)[which] + jax.random.normal(k2, (n, 8))


def _train(cfg, steps=600, lr=3e-2, batch=512):
  """Adam on the quantizer's own losses over fresh mixture batches; usage etc. on 8,192 held-out
  points. One jit for the whole run (a scan over steps), as compiling dominates on CPU."""
  model = VectorQuantizer(cfg)
  tx = optax.adam(lr)

  def step(carry, key):
    params, stats, opt = carry
    x = _mixture(key, batch)

    def loss(p):
      (_, _, aux), updates = model.apply({"params": p, STATS: stats}, x, train=True,
                                         mutable=[STATS], rngs={"vq": key})
      return aux["loss"], updates
    grads, updates = jax.grad(loss, has_aux=True)(params)
    changes, opt = tx.update(grads, opt, params)
    return (optax.apply_updates(params, changes), updates.get(STATS, stats), opt), None

  @jax.jit
  def run():
    variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8)), train=False))
    params, stats = variables.get("params", {}), variables.get(STATS, {})
    keys = jax.random.split(jax.random.key(1), steps)
    (params, stats, _), _ = jax.lax.scan(step, (params, stats, tx.init(params)), keys)
    return model.apply({"params": params, STATS: stats}, _mixture(jax.random.key(2), 8192),
                       train=False)[2]

  aux = run()
  return {k: float(aux[k]) for k in ("usage", "perplexity", "commitment_loss")}


def test_training_plain_vq_leaves_codes_unused_simvq_and_restarts_do_not():
  base = dict(codebook_size=128, dim=8)
  results = {
      "plain": _train(QuantizerConfig(**base)),
      "simvq": _train(QuantizerConfig(**base, simvq=True)),
      "ema": _train(QuantizerConfig(**base, ema_decay=0.95)),
      "ema_restart": _train(QuantizerConfig(**base, ema_decay=0.95, dead_code_threshold=0.5)),
  }
  print({name: {k: round(v, 3) for k, v in r.items()} for name, r in results.items()})
  plain, simvq, restart = results["plain"], results["simvq"], results["ema_restart"]
  assert plain["usage"] < 0.5
  assert simvq["usage"] > 0.8 and simvq["usage"] > plain["usage"] + 0.3
  assert restart["usage"] > 0.95
  assert results["ema"]["usage"] < 0.5  # EMA alone does not fix it; the restarts do
  assert simvq["perplexity"] > plain["perplexity"] and restart["perplexity"] > simvq["perplexity"]
  # More codes in use quantize more finely.
  assert restart["commitment_loss"] < plain["commitment_loss"]
  assert simvq["commitment_loss"] < plain["commitment_loss"]
