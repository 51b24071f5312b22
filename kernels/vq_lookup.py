"""Nearest-code lookup for vector quantization, without the N x K distance matrix.

A VQ image tokenizer maps each of N vectors to the nearest of K codebook entries. The obvious
form builds the [N, K] distance matrix: 16,384 codes x 256 tokens/image x batch 1024 is 16 GiB of
float32. This module keeps only a tile of it alive at a time:

- `vq_lookup_reference`: the obvious form (materializes N x K); for tests only.
- XLA path: tokens in chunks (lax.map) and codes in chunks (lax.scan) with a running minimum, so
  one chunk x chunk tile exists at a time. The default on CPU.
- Pallas TPU (Mosaic) kernel: grid (token blocks, code blocks), code axis innermost and
  "arbitrary". Each step computes a [codes, tokens] distance tile on the MXU and folds it into a
  running min/argmin held in VMEM scratch; only [N] indices and distances reach HBM.
- Pallas GPU (Triton) kernel: the same tile math with the code loop inside the kernel, since
  Triton keeps no scratch across grid steps. Its lowering is checked on CPU and it runs in
  interpret mode there; it has not run on a GPU.

All paths score a tile as `bias[k] + x . c'[k]` with c' = -2c and bias = ||c||^2 (l2), or
c' = -c and bias = 0 on unit vectors (cosine): scaling by -2 or -1 is exact, so exact ties stay
exact. The per-token term (||x||^2, or 1) is added after the minimum. Padded codes get bias +inf
and can never win. Ties go to the lowest code index, as jnp.argmin does.

Distances: metric='l2' is the squared Euclidean distance ||x - c||^2 (clamped at 0 against
cancellation); metric='cosine' is 1 - cos(x, c).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

METRICS = ("l2", "cosine")
from unimodal_jax.kernels.dispatch import resolve_impl
_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class VQBlockSizes:
  """Tile sizes; each is clamped to the (padded) problem size.

  TPU tiles are [block_codes, block_tokens] float32 in VMEM (512 x 256 x 4 B = 512 KiB): tokens
  lie on lanes so the per-token minimum comes out lane-dense, hence multiples of 128. Triton wants
  powers of two and keeps the tile in registers, hence the smaller GPU tiles. The XLA chunks bound
  the live tile to chunk_tokens x chunk_codes float32 (8 MiB by default).
  """
  block_tokens: int = 256
  block_codes: int = 512
  gpu_block_tokens: int = 64
  gpu_block_codes: int = 64
  chunk_tokens: int = 1024
  chunk_codes: int = 2048

  def __post_init__(self):
    for name in ("block_tokens", "block_codes"):
      if getattr(self, name) <= 0 or getattr(self, name) % 128:
        raise ValueError(f"{name}={getattr(self, name)} must be a positive multiple of 128")
    for name in ("gpu_block_tokens", "gpu_block_codes"):
      v = getattr(self, name)
      if v < 16 or v & (v - 1):
        raise ValueError(f"{name}={v} must be a power of two >= 16 (Triton)")
    for name in ("chunk_tokens", "chunk_codes"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive")


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _unit(v):
  """Rows scaled to unit length in float32 (zero rows stay zero)."""
  v = v.astype(jnp.float32)
  return v * lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _NORM_EPS))


def _check(x, codebook, metric):
  if metric not in METRICS:
    raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
  if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
    raise ValueError(f"expected x [N, D] and codebook [K, D], got {x.shape} and {codebook.shape}")
  if codebook.shape[0] == 0:
    raise ValueError("empty codebook")


def vq_lookup_reference(x, codebook, *, metric="l2"):
  """Materializes the float32 [N, K] distance matrix; for tests only."""
  _check(x, codebook, metric)
  if metric == "l2":
    xf, cf = x.astype(jnp.float32), codebook.astype(jnp.float32)
    d = (jnp.sum(xf * xf, -1)[:, None] - 2.0 * jnp.dot(xf, cf.T, precision="highest")
         + jnp.sum(cf * cf, -1)[None, :])
  else:
    d = 1.0 - jnp.dot(_unit(x), _unit(codebook).T, precision="highest")
  idx = jnp.argmin(d, axis=1).astype(jnp.int32)
  dist = jnp.take_along_axis(d, idx[:, None], axis=1)[:, 0]
  return idx, (jnp.maximum(dist, 0.0) if metric == "l2" else dist)


def _operands(x, codebook, metric):
  """(x, scaled codebook c', per-code bias [K] f32, per-token term [N] f32) for the tile form.

  Matmul operands keep the input dtype (bf16 stays bf16 on the MXU, accumulating in f32).
  """
  if metric == "l2":
    cf = codebook.astype(jnp.float32)
    xf = x.astype(jnp.float32)
    return x, codebook * jnp.asarray(-2, codebook.dtype), jnp.sum(cf * cf, -1), jnp.sum(xf * xf, -1)
  xu, cu = _unit(x).astype(x.dtype), _unit(codebook).astype(codebook.dtype)
  return xu, -cu, jnp.zeros(codebook.shape[0], jnp.float32), jnp.ones(x.shape[0], jnp.float32)


def _finish(best, tok, metric):
  d = tok + best
  return jnp.maximum(d, 0.0) if metric == "l2" else d


def _pad_rows(a, rows, value=0):
  if a.shape[0] == rows:
    return a
  pad = [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
  return jnp.pad(a, pad, constant_values=value)


# ---------------------------------------------------------------------------------------------
# XLA path: chunked, bounded memory.


def _vq_xla(x, codebook, metric, bs: VQBlockSizes):
  n, d = x.shape
  k = codebook.shape[0]
  xs, cs, bias, tok = _operands(x, codebook, metric)
  tn = min(bs.chunk_tokens, _round_up(n, 8))
  tk = min(bs.chunk_codes, _round_up(k, 8))
  n_pad, k_pad = _round_up(n, tn), _round_up(k, tk)
  x_chunks = _pad_rows(xs, n_pad).reshape(n_pad // tn, tn, d)
  c_chunks = _pad_rows(cs, k_pad).reshape(k_pad // tk, tk, d)
  b_chunks = _pad_rows(bias, k_pad, jnp.inf).reshape(k_pad // tk, tk)
  offsets = jnp.arange(0, k_pad, tk, dtype=jnp.int32)

  def token_chunk(xc):
    def step(carry, chunk):
      best, arg = carry
      c, b, off = chunk
      s = b[None, :] + lax.dot_general(xc, c, (((1,), (1,)), ((), ())),
                                       preferred_element_type=jnp.float32)
      m = jnp.min(s, axis=1)
      a = jnp.argmin(s, axis=1).astype(jnp.int32) + off
      # Strict: an equal value in a later chunk has a higher index.
      better = m < best
      return (jnp.where(better, m, best), jnp.where(better, a, arg)), None

    init = (jnp.full((tn,), jnp.inf, jnp.float32), jnp.zeros((tn,), jnp.int32))
    return lax.scan(step, init, (c_chunks, b_chunks, offsets))[0]

  best, arg = lax.map(token_chunk, x_chunks)
  best, arg = best.reshape(n_pad)[:n], arg.reshape(n_pad)[:n]
  return arg, _finish(best, tok, metric)


# ---------------------------------------------------------------------------------------------
# Tile math shared by the TPU and GPU kernels. Tiles are [codes, tokens]: tokens on lanes, so the
# per-token results are (1, tokens) rows.


def _score_tile(c, x, bias):
  """[bk, 1] bias + c' [bk, D] . x [bn, D]^T -> [bk, bn] float32."""
  return bias + lax.dot_general(c, x, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _fold_tile(best, arg, s, offset):
  """Merge tile `s` (codes offset.. on axis 0) into the running (1, bn) min and argmin."""
  m = jnp.min(s, axis=0, keepdims=True)
  rows = lax.broadcasted_iota(jnp.int32, s.shape, 0)
  # Lowest row holding the minimum: the tie rule of argmin.
  a = jnp.min(jnp.where(s == m, rows, s.shape[0]), axis=0, keepdims=True) + offset
  better = m < best  # strict: earlier tiles hold lower indices
  return jnp.where(better, m, best), jnp.where(better, a, arg)


def _vq_tpu_kernel(x_ref, c_ref, bias_ref, tok_ref, idx_ref, dist_ref, best_ref, arg_ref, *,
                   clamp):
  j = pl.program_id(1)
  block_codes = c_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    best_ref[...] = jnp.full(best_ref.shape, jnp.inf, jnp.float32)
    arg_ref[...] = jnp.zeros(arg_ref.shape, jnp.int32)

  s = _score_tile(c_ref[...], x_ref[...], bias_ref[...])
  best, arg = _fold_tile(best_ref[...], arg_ref[...], s, j * block_codes)
  best_ref[...] = best
  arg_ref[...] = arg

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    idx_ref[...] = arg
    d = tok_ref[...] + best
    dist_ref[...] = jnp.maximum(d, 0.0) if clamp else d


def _vq_tpu(x, codebook, metric, bs: VQBlockSizes, interpret):
  n, d = x.shape
  k = codebook.shape[0]
  xs, cs, bias, tok = _operands(x, codebook, metric)
  bn = min(bs.block_tokens, _round_up(n, 128))
  bk = min(bs.block_codes, _round_up(k, 128))
  n_pad, k_pad = _round_up(n, bn), _round_up(k, bk)
  xs = _pad_rows(xs, n_pad)
  cs = _pad_rows(cs, k_pad)
  bias = _pad_rows(bias, k_pad, jnp.inf)[:, None]  # [K, 1]: one per tile row
  tok = _pad_rows(tok, n_pad)[None, :]  # [1, N]: lane-dense
  grid = (n_pad // bn, k_pad // bk)
  itemsize = jnp.dtype(x.dtype).itemsize
  cost = pl.CostEstimate(
      flops=2 * n_pad * k_pad * d,
      transcendentals=0,
      bytes_accessed=n_pad * d * itemsize + grid[0] * k_pad * (d * itemsize + 4) + 12 * n_pad)
  idx, dist = pl.pallas_call(
      functools.partial(_vq_tpu_kernel, clamp=metric == "l2"),
      out_shape=(jax.ShapeDtypeStruct((1, n_pad), jnp.int32),
                 jax.ShapeDtypeStruct((1, n_pad), jnp.float32)),
      grid=grid,
      in_specs=[
          pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
          pl.BlockSpec((bk, d), lambda i, j: (j, 0)),
          pl.BlockSpec((bk, 1), lambda i, j: (j, 0)),
          pl.BlockSpec((1, bn), lambda i, j: (0, i)),
      ],
      out_specs=(pl.BlockSpec((1, bn), lambda i, j: (0, i)),
                 pl.BlockSpec((1, bn), lambda i, j: (0, i))),
      scratch_shapes=[pltpu.VMEM((1, bn), jnp.float32), pltpu.VMEM((1, bn), jnp.int32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      cost_estimate=cost,
      interpret=interpret,
      name="vq_lookup_tpu",
  )(xs, cs, bias, tok)
  return idx[0, :n], dist[0, :n]


def _vq_gpu_kernel(x_ref, c_ref, bias_ref, tok_ref, idx_ref, dist_ref, *, block_codes,
                   num_code_blocks, clamp):
  x = x_ref[...]
  bn = x.shape[0]

  def body(j, carry):
    start = pl.multiple_of(j * block_codes, block_codes)
    s = _score_tile(c_ref[pl.ds(start, block_codes), :], x, bias_ref[pl.ds(start, block_codes), :])
    return _fold_tile(*carry, s, start)

  init = (jnp.full((1, bn), jnp.inf, jnp.float32), jnp.zeros((1, bn), jnp.int32))
  best, arg = lax.fori_loop(0, num_code_blocks, body, init)
  idx_ref[...] = arg
  d = tok_ref[...] + best
  dist_ref[...] = jnp.maximum(d, 0.0) if clamp else d


def _vq_gpu(x, codebook, metric, bs: VQBlockSizes, interpret):
  from jax.experimental.pallas import triton as pltriton

  n, d = x.shape
  k = codebook.shape[0]
  xs, cs, bias, tok = _operands(x, codebook, metric)
  # Triton: power-of-two shapes, and dots need every dimension >= 16; zero columns change nothing.
  d_pad = max(16, pl.next_power_of_2(d))
  if d_pad != d:
    xs = jnp.pad(xs, ((0, 0), (0, d_pad - d)))
    cs = jnp.pad(cs, ((0, 0), (0, d_pad - d)))
  bn = min(bs.gpu_block_tokens, max(16, pl.next_power_of_2(n)))
  bk = min(bs.gpu_block_codes, max(16, pl.next_power_of_2(k)))
  n_pad, k_pad = _round_up(n, bn), _round_up(k, bk)
  xs = _pad_rows(xs, n_pad)
  cs = _pad_rows(cs, k_pad)
  bias = _pad_rows(bias, k_pad, jnp.inf)[:, None]
  tok = _pad_rows(tok, n_pad)[None, :]
  kernel = functools.partial(_vq_gpu_kernel, block_codes=bk, num_code_blocks=k_pad // bk,
                             clamp=metric == "l2")
  idx, dist = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((1, n_pad), jnp.int32),
                 jax.ShapeDtypeStruct((1, n_pad), jnp.float32)),
      grid=(n_pad // bn,),
      in_specs=[
          pl.BlockSpec((bn, d_pad), lambda i: (i, 0)),
          pl.BlockSpec(memory_space=pl.ANY),  # whole codebook; the kernel walks it
          pl.BlockSpec(memory_space=pl.ANY),
          pl.BlockSpec((1, bn), lambda i: (0, i)),
      ],
      out_specs=(pl.BlockSpec((1, bn), lambda i: (0, i)), pl.BlockSpec((1, bn), lambda i: (0, i))),
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="vq_lookup_gpu",
  )(xs, cs, bias, tok)
  return idx[0, :n], dist[0, :n]


# ---------------------------------------------------------------------------------------------
# Dispatch.


def vq_lookup(x, codebook, *, metric="l2", impl="auto", interpret=False, block_sizes=None,
              platform=None):
  """Nearest code of each row of x: (indices int32 [N], distances float32 [N]).

  x: [N, D]; codebook: [K, D] (same D; float32 or bfloat16). metric: 'l2' (squared Euclidean)
  or 'cosine' (1 - cosine similarity). impl: 'auto' (Pallas on TPU/GPU, XLA chunks on CPU),
  'xla', or 'pallas'. interpret: run the Pallas kernel in interpret mode (True, or a
  pltpu.InterpretParams for the TPU simulator). platform: the Pallas kernel to build ('tpu' or
  'gpu'; default: the default backend, and the TPU kernel when interpreting on CPU), e.g. 'tpu'
  when compiling ahead of time for a TPU from a CPU host.
  """
  _check(x, codebook, metric)
  dtype = jnp.result_type(x.dtype, codebook.dtype)  # one matmul dtype (Mosaic wants it)
  x, codebook = x.astype(dtype), codebook.astype(dtype)
  bs = block_sizes or VQBlockSizes()
  path = resolve_impl(impl, platform, interpret)
  if x.shape[0] == 0:
    return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.float32)
  if path == "xla":
    return _vq_xla(x, codebook, metric, bs)
  if path == "tpu":
    return _vq_tpu(x, codebook, metric, bs, interpret)
  return _vq_gpu(x, codebook, metric, bs, interpret)


def vq_lookup_sharded(x, codebook, mesh, axis_names, **kwargs):
  """vq_lookup with the tokens of x sharded over mesh axes `axis_names` (a name or a tuple),
  the codebook replicated. Each device runs the kernel on its own tokens inside jax.shard_map:
  Mosaic kernels cannot be partitioned automatically. The Pallas platform follows the mesh's
  devices, so this also compiles ahead of time for TPU device descriptions."""
  if "platform" not in kwargs:  # (setdefault would read .devices, which abstract meshes lack)
    kwargs["platform"] = mesh.devices.flat[0].platform
  names = axis_names if isinstance(axis_names, str) else tuple(axis_names)
  fn = jax.shard_map(functools.partial(vq_lookup, **kwargs), mesh=mesh,
                     in_specs=(P(names, None), P()), out_specs=(P(names), P(names)),
                     check_vma=False)
  return fn(x, codebook)
