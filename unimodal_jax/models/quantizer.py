"""Vector quantization for the semantic vision tokenizer: plain VQ, l2-normalized (cosine) VQ, EMA
codebook updates with dead-code restarts, and SimVQ.

ILLUME quantizes a vision encoder's features with a VQ codebook; ILLUME+ switched to SimVQ, which
used 100% of its codes where plain VQ used 6.59%. Plain VQ collapses because only the codes that
win a nearest-neighbour search get a gradient; the two cures here are (a) EMA updates that restart
codes nobody picks onto encoder outputs of the current batch and (b) SimVQ, whose codes are
`C @ W + b` with C a frozen random basis and W, b learned, so every gradient step moves every code.

    model = VectorQuantizer(QuantizerConfig(codebook_size=16384, dim=32, simvq=True))
    variables = model.init(rng, features, train=False)    # 'params' and/or 'vq_stats'
    q, ids, aux = model.apply(variables, features, train=False)          # eval; aux['loss'] etc.
    (q, ids, aux), updates = model.apply(variables, features, train=True, mutable=['vq_stats'],
                                         rngs={'vq': key})  # with ema_decay: EMA and restarts
    features = model.apply(variables, ids, method=VectorQuantizer.lookup)   # decode_features

Trainable state is in 'params'; everything the optimizer must never touch is in 'vq_stats' (the
EMA codebook and its statistics, SimVQ's frozen basis), so no frozen-group configuration is needed
and weight decay cannot shrink a "frozen" tensor. The nearest-code search never builds the full
tokens x codes distance matrix (16,384+ codes times every token of a batch would not fit).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from unimodal_jax.models.model_config import ModelConfig

METRICS = ("l2", "cosine")
STATS = "vq_stats"  # the collection of non-trainable quantizer state


@dataclasses.dataclass(frozen=True)
class QuantizerConfig(ModelConfig):
  SECTION = "quantizer"
  codebook_size: int
  dim: int
  # Cosine codes: inputs and codes are l2-normalized before the search, the losses and the output.
  l2_normalized: bool = False
  commitment_weight: float = 0.25  # beta: pulls encoder outputs toward their codes
  codebook_loss_weight: float = 1.0  # pulls codes toward encoder outputs (not used with EMA)
  # None: the codebook is a param learned by gradient. A decay (e.g. 0.99): the codebook is the
  # EMA mean of the encoder outputs assigned to each code, in 'vq_stats', with no gradient.
  ema_decay: float | None = None
  ema_epsilon: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
  # EMA only. A code whose EMA cluster size (tokens per batch) falls below this is dead and is
  # restarted onto a random encoder output of the current batch. 0 disables restarts.
  dead_code_threshold: float = 0.0
  simvq: bool = False  # codes = C @ W + b with C frozen (in 'vq_stats') and W, b learned
  init_scale: float = 1.0  # stddev of the initial codebook (of C for SimVQ)
  chunk_size: int = 1024  # tokens per chunk of the nearest-code search
  param_dtype: str = "float32"
  dtype: str = "float32"  # of the quantized output; search, losses and EMA statistics are float32

  def __post_init__(self):
    for name in ("codebook_size", "dim", "chunk_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"quantizer.{name} must be positive, got {getattr(self, name)}")
    for name in ("commitment_weight", "codebook_loss_weight", "dead_code_threshold", "init_scale",
                 "ema_epsilon"):
      if getattr(self, name) < 0:
        raise ValueError(f"quantizer.{name} must be >= 0, got {getattr(self, name)}")
    if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"quantizer.ema_decay={self.ema_decay} must be in [0, 1), or None")
    if self.simvq and self.ema_decay is not None:
      raise ValueError("quantizer.simvq learns its codes through W by gradient; it cannot also "
                       "use ema_decay (set one of them)")
    if self.dead_code_threshold > 0 and self.ema_decay is None:
      raise ValueError("quantizer.dead_code_threshold > 0 restarts codes in the EMA codebook; set "
                       "quantizer.ema_decay too (a gradient-learned codebook is a param, which "
                       "apply cannot overwrite)")
    self.check_dtypes()

  @property
  def metric(self) -> str:
    return "cosine" if self.l2_normalized else "l2"


def l2_normalize(x, eps: float = 1e-12):
  """x / ||x|| along the last axis; a zero vector stays zero instead of becoming NaN."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def nearest_codes(x_flat, codebook, metric: str = "l2", *, chunk_size: int = 1024):
  """The nearest code of every token: (indices int32 [N], distances float32 [N]).

  x_flat [N, D], codebook [K, D]. metric 'l2': distance = squared Euclidean ||x - c||^2;
  'cosine': distance = 1 - cos(x, c). Ties go to the lowest code index. Everything is float32: a
  bf16 argmin would merge near ties.

  One call to kernels.vq_lookup: the fused Pallas kernel on TPU/GPU (under shard_map over the
  mesh's batch axes inside `sharding.activation_sharding`), XLA chunks of `chunk_size` tokens on
  CPU, never the N x K distance matrix.
  """
  from unimodal_jax.kernels.vq_lookup import VQBlockSizes, vq_lookup, vq_lookup_sharded
  if metric not in METRICS:
    raise ValueError(f"nearest_codes metric {metric!r}; expected one of {METRICS}")
  if x_flat.ndim != 2 or codebook.ndim != 2 or x_flat.shape[1] != codebook.shape[1]:
    raise ValueError(f"nearest_codes wants x [N, D] and codebook [K, D]; got {x_flat.shape} and "
                     f"{codebook.shape}")
  x, c = x_flat.astype(jnp.float32), codebook.astype(jnp.float32)
  blocks = VQBlockSizes(chunk_tokens=chunk_size)
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh is None or mesh.empty else mesh.abstract_device
  if device is not None and device.platform in ("tpu", "gpu"):
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    return vq_lookup_sharded(x, c, mesh, axes, metric=metric, block_sizes=blocks,
                             platform=device.platform)
  return vq_lookup(x, c, metric=metric, block_sizes=blocks)


def code_statistics(indices, codebook_size: int):
  """(counts float32 [K], usage, perplexity) of a batch of code indices.

  usage: the fraction of codes used at least once; perplexity: exp of the entropy of the code
  frequencies (K when all codes are equally used, 1 when one code takes every token). bincount
  keeps this O(N + K): a one-hot would be the N x K buffer the search avoids.
  """
  counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
  p = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jax.scipy.special.xlogy(p, p))
  return counts, jnp.mean((counts > 0).astype(jnp.float32)), jnp.exp(entropy)


def _boxed(init, axes):
  return nn.with_logical_partitioning(init, axes)


class VectorQuantizer(nn.Module):
  """Features [..., dim] -> (quantized [..., dim], indices int32 [...], aux dict).

  aux: 'commitment_loss', 'codebook_loss' (not with EMA), 'loss' (their sum), 'usage' and
  'perplexity' of this batch's codes, and with EMA 'num_restarted' (dead codes restarted by this
  call; 0 unless the statistics were updated).
  """
  config: QuantizerConfig

  def setup(self):
    cfg = self.config
    k, d = cfg.codebook_size, cfg.dim
    normal = nn.initializers.normal(cfg.init_scale)
    if cfg.simvq:
      # C is frozen by living outside 'params'. W starts at the identity and b at zero, so at
      # init SimVQ's codes are a plain VQ codebook with the same distribution (the SimVQ
      # reference uses std dim^-0.5 and torch's default Linear init; W learns the scale anyway).
      # The bias (the reference's nn.Linear has one too) lets the codes of a zero-mean C follow
      # features centred away from the origin, which a linear map alone cannot.
      self.basis = self._stats_variable(
          "frozen_codebook",
          lambda: _boxed(normal, ("codebook", "embed"))(self.make_rng("params"), (k, d),
                                                        jnp.float32))
      # W's input axis stays unnamed: one mesh axis cannot shard both axes of a square matrix.
      self.proj_kernel = self.param(
          "proj_kernel", _boxed(lambda _, s, t: jnp.eye(s[0], dtype=t), (None, "embed")), (d, d),
          cfg.jnp_param_dtype)
      self.proj_bias = self.param("proj_bias", _boxed(nn.initializers.zeros_init(), ("embed",)),
                                  (d,), cfg.jnp_param_dtype)
    elif cfg.ema_decay is None:
      self.codebook = self.param("codebook", _boxed(normal, ("codebook", "embed")), (k, d),
                                 cfg.jnp_param_dtype)
    else:
      # EMA state, float32 whatever param_dtype: (1 - decay) increments vanish in bf16.
      # cluster_size starts at `initial_size` tokens per code and embed_sum at the initial codes
      # times that, so embed_sum / cluster_size is the initial codebook from the first update on.
      # With restarts on, `initial_size` is the threshold itself: a random code nobody picks in
      # the first update is restarted onto a batch vector at once (a data-dependent init).
      # Starting at one token instead left such codes idle until their size decayed below the
      # threshold, log(threshold) / log(decay) updates (about 300 at 0.05 and 0.99): the
      # 2,048-code shapes tokenizer used 1% of its codes for its first 250 steps.
      initial_size = cfg.dead_code_threshold if cfg.dead_code_threshold > 0 else 1.0
      self.ema_codebook = self._stats_variable(
          "codebook",
          lambda: _boxed(normal, ("codebook", "embed"))(self.make_rng("params"), (k, d),
                                                        jnp.float32))
      self.cluster_size = self._stats_variable(
          "cluster_size",
          lambda: _boxed(nn.initializers.constant(initial_size), ("codebook",))(
              None, (k,), jnp.float32))
      self.embed_sum = self._stats_variable(
          "embed_sum", _boxed(lambda: self.ema_codebook.value * initial_size,
                              ("codebook", "embed")))
      # Counts updates; with no 'vq' rng given, restarts draw from fold_in(key(0), steps).
      self.steps = self._stats_variable("steps", _boxed(lambda: jnp.zeros((), jnp.int32), ()))

  def _stats_variable(self, name, init):
    # Without this check a forgotten collection surfaces as "needs PRNG for 'params'".
    if not self.is_initializing() and not self.has_variable(STATS, name):
      raise ValueError(
          f"VectorQuantizer: variables[{STATS!r}][{name!r}] is missing; pass the {STATS!r} "
          f"collection from init to apply, e.g. model.apply({{'params': ..., {STATS!r}: ...}}, "
          f"...)")
    return self.variable(STATS, name, init)

  def codes(self):
    """The effective codebook, float32 [K, dim] (unit rows when l2_normalized)."""
    cfg = self.config
    if cfg.simvq:
      c = self._project(self.basis.value)
    elif cfg.ema_decay is None:
      c = self.codebook.astype(jnp.float32)
    else:
      c = self.ema_codebook.value
    return l2_normalize(c) if cfg.l2_normalized else c

  def _project(self, basis_rows):
    return (basis_rows @ self.proj_kernel.astype(jnp.float32)
            + self.proj_bias.astype(jnp.float32))

  def lookup(self, indices):
    """Code vectors [..., dim] (in `dtype`) for int indices [...]: the feature decoder's input."""
    cfg = self.config
    if cfg.simvq:
      # Project only the rows asked for rather than the whole K x dim codebook.
      c = self._project(jnp.take(self.basis.value, indices, axis=0))
      c = l2_normalize(c) if cfg.l2_normalized else c
    else:
      c = jnp.take(self.codes(), indices, axis=0)
    return c.astype(cfg.jnp_dtype)

  def __call__(self, x, *, train: bool):
    cfg = self.config
    if x.shape[-1] != cfg.dim:
      raise ValueError(f"VectorQuantizer: input feature size {x.shape[-1]} != quantizer.dim "
                       f"{cfg.dim}")
    lead = x.shape[:-1]
    x = x.astype(jnp.float32).reshape(-1, cfg.dim)
    if cfg.l2_normalized:
      x = l2_normalize(x)
    codes = self.codes()
    # The search needs no gradient; stop_gradient keeps autodiff out of the chunked loop.
    indices, _ = nearest_codes(jax.lax.stop_gradient(x), jax.lax.stop_gradient(codes),
                               cfg.metric, chunk_size=cfg.chunk_size)
    q = jnp.take(codes, indices, axis=0)

    sq_dist = lambda a, b: jnp.mean(jnp.sum(jnp.square(a - b), axis=-1))
    aux = {"commitment_loss": cfg.commitment_weight * sq_dist(x, jax.lax.stop_gradient(q))}
    if cfg.ema_decay is None:
      aux["codebook_loss"] = cfg.codebook_loss_weight * sq_dist(jax.lax.stop_gradient(x), q)
    aux["loss"] = sum(aux.values())
    counts, aux["usage"], aux["perplexity"] = code_statistics(indices, cfg.codebook_size)

    if cfg.ema_decay is not None:
      aux["num_restarted"] = jnp.zeros((), jnp.int32)
      if train and self.is_mutable_collection(STATS) and not self.is_initializing():
        aux["num_restarted"] = self._ema_update(jax.lax.stop_gradient(x), indices, counts)

    # Straight-through: the forward value is q, the gradient w.r.t. x is the identity.
    quantized = x + jax.lax.stop_gradient(q - x)
    return (quantized.astype(cfg.jnp_dtype).reshape(*lead, cfg.dim), indices.reshape(lead), aux)

  def _ema_update(self, x, indices, counts):
    """One EMA step of cluster sizes and sums, the Laplace-smoothed codebook, then restarts.
    Returns the number of codes restarted."""
    cfg = self.config
    k, decay = cfg.codebook_size, cfg.ema_decay
    sums = jax.ops.segment_sum(x, indices, num_segments=k)
    cluster = decay * self.cluster_size.value + (1.0 - decay) * counts
    embed_sum = decay * self.embed_sum.value + (1.0 - decay) * sums
    # Laplace smoothing keeps a code with no tokens from dividing by zero; the total is kept.
    total = jnp.sum(cluster)
    smoothed = (cluster + cfg.ema_epsilon) / (total + k * cfg.ema_epsilon) * total
    codebook = embed_sum / smoothed[:, None]

    num_restarted = jnp.zeros((), jnp.int32)
    if cfg.dead_code_threshold > 0:
      key = (self.make_rng("vq") if self.has_rng("vq")
             else jax.random.fold_in(jax.random.key(0), self.steps.value))
      n = x.shape[0]
      # Distinct batch vectors when the batch has enough of them.
      pick = (jax.random.permutation(key, n)[:k] if n >= k
              else jax.random.randint(key, (k,), 0, n))
      candidates = jnp.take(x, pick, axis=0)
      dead = cluster < cfg.dead_code_threshold
      # A restarted code holds threshold tokens' worth of its new vector: it is not dead at once,
      # and is restarted again only if nothing picks it before its size decays below threshold.
      codebook = jnp.where(dead[:, None], candidates, codebook)
      embed_sum = jnp.where(dead[:, None], candidates * cfg.dead_code_threshold, embed_sum)
      cluster = jnp.where(dead, cfg.dead_code_threshold, cluster)
      num_restarted = jnp.sum(dead.astype(jnp.int32))

    self.cluster_size.value = cluster
    self.embed_sum.value = embed_sum
    self.ema_codebook.value = codebook
    self.steps.value = self.steps.value + 1
    return num_restarted
