"""Flash attention: fused, causal, segment-masked attention as Pallas kernels.

Same inputs and mask as `unimodal_jax.models.attention.dot_product_attention`: layout
[batch, length, heads, head_dim], grouped-query heads (key/value heads divide query heads), keys
visible to a query when causal in slot order (if `causal`) and in the same segment (segment 0
marks padding, which attends to padding). Scale 1/sqrt(head_dim); softmax in float32.

Why: the reference materializes [batch, heads, Lq, Lk] float32 logits; these kernels keep one
[block_q, block_kv] tile at a time (online softmax) and save only a per-row log-sum-exp.

- TPU (Mosaic), forward: grid (batch, heads, q blocks, kv blocks), kv axis innermost and
  "arbitrary"; running max, normalizer and output accumulator live in VMEM scratch.
- TPU backward: two Pallas kernels recompute score tiles from q, k and the saved log-sum-exp. The
  dk/dv kernel walks (query heads of the group) x (q blocks) per kv block, so GQA gradients are
  summed in VMEM; the dq kernel walks kv blocks per q block.
- Causal: tiles above the diagonal are skipped, and their index maps repeat a block the pipeline
  already holds, so they cost no DMA either.
- Layout on TPU: with head_dim a multiple of 128 the kernels read [B, L, H*D] (a free reshape);
  otherwise they read heads-major [B, H, L, D] (one transpose each way), because a Mosaic block's
  last dim must be a multiple of 128 or the whole dim.
- GPU (Triton): the same tile functions, with the loops inside the kernel (Triton keeps no
  scratch across grid steps); forward and both backward kernels. Lowering is checked on CPU and
  they run in interpret mode there; tools/device_check.py times them against cuDNN on an H100.

Lengths are padded to block multiples: padded keys are masked out, padded query rows are dropped
(their cotangent is zero, so they add nothing to dk/dv).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from unimodal_jax.kernels.dispatch import resolve_impl, shard_attention
from unimodal_jax.kernels.attention_mask import attention_mask

# Finite, so a fully masked row (only padded query rows) averages instead of producing NaN.
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # a [m, d] . b [n, d] -> [m, n]
_TN = (((0,), (0,)), ((), ()))  # a [d, m] . b [d, n] -> [m, n]


@dataclasses.dataclass(frozen=True)
class FlashBlockSizes:
  """Tile sizes, clamped to the (128-rounded) sequence lengths.

  TPU tiles are multiples of 128 (kv on lanes, and the kv segment ids are a lane-dense row);
  the TPU defaults are untuned. Triton tiles are powers of two kept in registers, hence smaller;
  gpu_num_warps / gpu_num_stages are Triton's launch parameters (warps per program, software
  pipeline depth of the kv loop), *_bwd those of both backward kernels.

  GPU defaults from `tools/bench_flash_gpu.py` on an H100 (bf16, causal, head_dim 128, jax
  0.11.2; docs/results.md, 2026-11-27): the forward's 128 x 32 tiles, 4 warps, 3 stages run
  within 2% of the fastest of 24 (128 x 128, 8 warps) and 10% faster than the former 64 x 64,
  2 stages, while their pipelined k/v tiles (3 stages x 2 x 32 rows) stay small enough for
  shared memory at head_dim 256 or in float32, where the fastest's do not. The backward's
  64 x 64, 4 warps, 2 stages were the fastest of the 20 tried.
  """
  block_q: int = 512
  block_kv: int = 512
  block_q_bwd: int = 256
  block_kv_bwd: int = 256
  gpu_block_q: int = 128
  gpu_block_kv: int = 32
  gpu_block_q_bwd: int = 64
  gpu_block_kv_bwd: int = 64
  gpu_num_warps: int = 4
  gpu_num_warps_bwd: int = 4
  gpu_num_stages: int = 3
  gpu_num_stages_bwd: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_kv", "block_q_bwd", "block_kv_bwd"):
      if getattr(self, name) <= 0 or getattr(self, name) % 128:
        raise ValueError(f"{name}={getattr(self, name)} must be a positive multiple of 128")
    for name in ("gpu_block_q", "gpu_block_kv", "gpu_block_q_bwd", "gpu_block_kv_bwd"):
      v = getattr(self, name)
      if v < 16 or v & (v - 1):
        raise ValueError(f"{name}={v} must be a power of two >= 16 (Triton)")
    for name in ("gpu_num_warps", "gpu_num_warps_bwd"):
      v = getattr(self, name)
      if v < 1 or v & (v - 1) or v > 16:
        raise ValueError(f"{name}={v} must be 1, 2, 4, 8 or 16 (Triton)")
    for name in ("gpu_num_stages", "gpu_num_stages_bwd"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# ---------------------------------------------------------------------------------------------
# Reference (the XLA path).


def flash_attention_reference(q, k, v, *, causal=True, segment_ids=None):
  """The project's attention (materializes the logits); 'xla' impl and test oracle."""
  b, lq = q.shape[:2]
  lk = k.shape[1]
  if causal:
    q_seg = jnp.ones((b, lq), jnp.int32) if segment_ids is None else segment_ids
    kv_seg = jnp.ones((b, lk), jnp.int32) if segment_ids is None else segment_ids
    mask = attention_mask(q_seg, kv_seg)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  mask = None
  if segment_ids is not None:
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


# ---------------------------------------------------------------------------------------------
# Tile math shared by the TPU and GPU kernels. Row statistics are [rows, 1] float32.


def _tile_mask(shape, q_start, kv_start, *, causal, kv_len, q_seg, kv_seg):
  """Boolean [bq, bk] (None: all visible). kv_len: mask keys at or past it (padding)."""
  conds = []
  if causal or kv_len is not None:
    cols = lax.broadcasted_iota(jnp.int32, shape, 1) + kv_start
  if causal:
    conds.append(cols <= lax.broadcasted_iota(jnp.int32, shape, 0) + q_start)
  if kv_len is not None:
    conds.append(cols < kv_len)
  if q_seg is not None:
    conds.append(q_seg == kv_seg)  # [bq, 1] == [1, bk]
  return functools.reduce(jnp.logical_and, conds) if conds else None


def _scores(q, k, scale, mask):
  s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
  return s if mask is None else jnp.where(mask, s, _MASK)


def _fwd_tile(q, k, v, m, l, acc, scale, mask):
  """One online-softmax step: fold the tile's scores into (max, normalizer, accumulator)."""
  s = _scores(q, k, scale, mask)
  m_next = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  alpha = jnp.exp(m - m_next)
  p = jnp.exp(s - m_next)
  l_next = alpha * l + jnp.sum(p, axis=1, keepdims=True)
  acc_next = alpha * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return m_next, l_next, acc_next


def _bwd_tile(q, k, v, do, lse, delta, scale, mask):
  """Probabilities p and the logit gradient ds (scale folded in) of one tile."""
  p = jnp.exp(_scores(q, k, scale, mask) - lse)
  dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
  return p, p * (dp - delta) * scale


# ---------------------------------------------------------------------------------------------
# Static plan of one call.


@dataclasses.dataclass(frozen=True)
class _Plan:
  causal: bool
  scale: float
  heads: int
  kv_heads: int
  head_dim: int  # as laid out (GPU pads it)
  q_len: int
  kv_len: int
  q_pad: int
  kv_pad: int
  bq: int  # forward (and GPU backward) tiles
  bk: int
  bq_bwd: int
  bk_bwd: int
  fused: bool  # TPU [B, L, H*D] layout
  backend: str  # 'tpu' | 'gpu'
  interpret: object
  gpu_launch: tuple  # Triton (warps, stages) of the forward, then of the backward

  @property
  def group(self):
    return self.heads // self.kv_heads

  @property
  def kv_len_mask(self):
    return self.kv_len if self.kv_pad != self.kv_len else None


def _last_kv_block(i, bq, bk, nk):
  """Last kv block a causal q block i needs."""
  return jnp.minimum((i * bq + bq - 1) // bk, nk - 1)


def _first_q_block(j, bq, bk, nq):
  """First q block that a causal kv block j feeds."""
  return jnp.minimum((j * bk) // bq, nq - 1)


def _seq_spec(plan, block, index):
  """BlockSpec of a (block, head_dim) slab of q/k/v/o; index(*grid) -> (batch, head, seq block)."""
  if plan.fused:
    def fused_map(*g):
      b, h, s = index(*g)
      return b, s, h
    return pl.BlockSpec((None, block, plan.head_dim), fused_map)

  def heads_map(*g):
    b, h, s = index(*g)
    return b, h, s, 0
  return pl.BlockSpec((None, None, block, plan.head_dim), heads_map)


def _row_spec(block, index):
  """[B, H, L, 1] float32 row statistics (lse, delta)."""
  def row_map(*g):
    b, h, s = index(*g)
    return b, h, s, 0
  return pl.BlockSpec((None, None, block, 1), row_map)


def _seg_specs(bq, bk, q_index, kv_index):
  """q segment ids [B, Lq, 1] as a column, kv segment ids [B, 1, Lk] as a lane-dense row."""
  def q_map(*g):
    b, _, s = q_index(*g)
    return b, s, 0

  def kv_map(*g):
    b, _, s = kv_index(*g)
    return b, 0, s
  return [pl.BlockSpec((None, bq, 1), q_map), pl.BlockSpec((None, 1, bk), kv_map)]


def _skip_unless(causal, visible, fn):
  if causal:
    pl.when(visible)(fn)
  else:
    fn()


# ---------------------------------------------------------------------------------------------
# TPU kernels.


def _tpu_fwd_kernel(*refs, plan, has_seg):
  if has_seg:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc = refs
    qs_ref = ks_ref = None
  i, j = pl.program_id(2), pl.program_id(3)
  bq, bk = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def step():
    mask = _tile_mask((bq, bk), i * bq, j * bk, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=None if qs_ref is None else qs_ref[...],
                      kv_seg=None if ks_ref is None else ks_ref[...])
    m, l, acc = _fwd_tile(q_ref[...], k_ref[...], v_ref[...], m_sc[...], l_sc[...], acc_sc[...],
                          plan.scale, mask)
    m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

  _skip_unless(plan.causal, j * bk <= i * bq + bq - 1, step)

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] * (1.0 / l)).astype(o_ref.dtype)  # one divide per row
    lse_ref[...] = m_sc[...] + jnp.log(l)


def _tpu_fwd(plan, q, k, v, q_seg, kv_seg):
  b = q.shape[0]
  bq, bk = plan.bq, plan.bk
  nq, nk = plan.q_pad // bq, plan.kv_pad // bk
  g = plan.group

  def q_index(bi, h, i, j):
    return bi, h, i

  def kv_index(bi, h, i, j):
    jj = _last_kv_block(i, bq, bk, nk) if plan.causal else j
    return bi, h // g, jnp.minimum(j, jj)

  has_seg = q_seg is not None
  in_specs = [_seq_spec(plan, bq, q_index), _seq_spec(plan, bk, kv_index),
              _seq_spec(plan, bk, kv_index)]
  args = [q, k, v]
  if has_seg:
    in_specs += _seg_specs(bq, bk, q_index, kv_index)
    args += [q_seg, kv_seg]
  d = plan.head_dim
  itemsize = jnp.dtype(q.dtype).itemsize
  causal_frac = 0.5 if plan.causal else 1.0
  cost = pl.CostEstimate(
      flops=int(4 * b * plan.heads * plan.q_pad * plan.kv_pad * d * causal_frac),
      transcendentals=int(b * plan.heads * plan.q_pad * plan.kv_pad * causal_frac),
      bytes_accessed=int(itemsize * b * d * (2 * plan.heads * plan.q_pad
                                             + 2 * plan.kv_heads * plan.kv_pad * nq)))
  return pl.pallas_call(
      functools.partial(_tpu_fwd_kernel, plan=plan, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, plan.heads, plan.q_pad, 1), jnp.float32)),
      grid=(b, plan.heads, nq, nk),
      in_specs=in_specs,
      out_specs=(_seq_spec(plan, bq, q_index), _row_spec(bq, q_index)),
      scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=cost,
      interpret=plan.interpret,
      name="flash_attention_fwd",
  )(*args)


def _tpu_dkv_kernel(*refs, plan, has_seg):
  if has_seg:
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dk_ref, dv_ref, dk_sc,
     dv_sc) = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
    qs_ref = ks_ref = None
  j, t = pl.program_id(2), pl.program_id(3)
  bq, bk = q_ref.shape[0], k_ref.shape[0]
  i = t % (plan.q_pad // bq)

  @pl.when(t == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def step():
    mask = _tile_mask((bq, bk), i * bq, j * bk, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=None if qs_ref is None else qs_ref[...],
                      kv_seg=None if ks_ref is None else ks_ref[...])
    q, do = q_ref[...], do_ref[...]
    p, ds = _bwd_tile(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...], plan.scale,
                      mask)
    dv_sc[...] += lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
    dk_sc[...] += lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)

  _skip_unless(plan.causal, j * bk <= i * bq + bq - 1, step)

  @pl.when(t == pl.num_programs(3) - 1)
  def _write():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _tpu_dkv(plan, q, k, v, q_seg, kv_seg, do, lse, delta):
  b = q.shape[0]
  bq, bk = plan.bq_bwd, plan.bk_bwd
  nq, nk = plan.q_pad // bq, plan.kv_pad // bk
  g = plan.group

  # Inner axis t walks the group's query heads, each over its q blocks.
  def q_index(bi, hk, j, t):
    i = t % nq
    if plan.causal:
      i = jnp.maximum(i, _first_q_block(j, bq, bk, nq))
    return bi, hk * g + t // nq, i

  def kv_index(bi, hk, j, t):
    return bi, hk, j

  has_seg = q_seg is not None
  in_specs = [_seq_spec(plan, bq, q_index), _seq_spec(plan, bk, kv_index),
              _seq_spec(plan, bk, kv_index), _seq_spec(plan, bq, q_index),
              _row_spec(bq, q_index), _row_spec(bq, q_index)]
  args = [q, k, v, do, lse, delta]
  if has_seg:
    in_specs += _seg_specs(bq, bk, q_index, kv_index)
    args += [q_seg, kv_seg]
  d = plan.head_dim
  return pl.pallas_call(
      functools.partial(_tpu_dkv_kernel, plan=plan, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(b, plan.kv_heads, nk, g * nq),
      in_specs=in_specs,
      out_specs=(_seq_spec(plan, bk, kv_index), _seq_spec(plan, bk, kv_index)),
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=plan.interpret,
      name="flash_attention_dkv",
  )(*args)


def _tpu_dq_kernel(*refs, plan, has_seg):
  if has_seg:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dq_ref, dq_sc = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc = refs
    qs_ref = ks_ref = None
  i, j = pl.program_id(2), pl.program_id(3)
  bq, bk = q_ref.shape[0], k_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def step():
    mask = _tile_mask((bq, bk), i * bq, j * bk, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=None if qs_ref is None else qs_ref[...],
                      kv_seg=None if ks_ref is None else ks_ref[...])
    k = k_ref[...]
    _, ds = _bwd_tile(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                      plan.scale, mask)
    dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  _skip_unless(plan.causal, j * bk <= i * bq + bq - 1, step)

  @pl.when(j == pl.num_programs(3) - 1)
  def _write():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _tpu_dq(plan, q, k, v, q_seg, kv_seg, do, lse, delta):
  b = q.shape[0]
  bq, bk = plan.bq_bwd, plan.bk_bwd
  nq, nk = plan.q_pad // bq, plan.kv_pad // bk
  g = plan.group

  def q_index(bi, h, i, j):
    return bi, h, i

  def kv_index(bi, h, i, j):
    jj = _last_kv_block(i, bq, bk, nk) if plan.causal else j
    return bi, h // g, jnp.minimum(j, jj)

  has_seg = q_seg is not None
  in_specs = [_seq_spec(plan, bq, q_index), _seq_spec(plan, bk, kv_index),
              _seq_spec(plan, bk, kv_index), _seq_spec(plan, bq, q_index),
              _row_spec(bq, q_index), _row_spec(bq, q_index)]
  args = [q, k, v, do, lse, delta]
  if has_seg:
    in_specs += _seg_specs(bq, bk, q_index, kv_index)
    args += [q_seg, kv_seg]
  return pl.pallas_call(
      functools.partial(_tpu_dq_kernel, plan=plan, has_seg=has_seg),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(b, plan.heads, nq, nk),
      in_specs=in_specs,
      out_specs=_seq_spec(plan, bq, q_index),
      scratch_shapes=[pltpu.VMEM((bq, plan.head_dim), jnp.float32)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=plan.interpret,
      name="flash_attention_dq",
  )(*args)


# ---------------------------------------------------------------------------------------------
# GPU (Triton) kernels: heads-major [B, H, L, D], loops inside the kernel.


def _gpu_seg(qs_ref, ks_ref, q_start, kv_start, bq, bk):
  if qs_ref is None:
    return None, None
  return (qs_ref[pl.ds(q_start, bq)][:, None], ks_ref[pl.ds(kv_start, bk)][None, :])


def _gpu_fwd_kernel(*refs, plan, has_seg):
  if has_seg:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref = refs
  else:
    q_ref, k_ref, v_ref, o_ref, lse_ref = refs
    qs_ref = ks_ref = None
  i = pl.program_id(2)
  bq, bk = plan.bq, plan.bk
  nk = plan.kv_pad // bk
  q = q_ref[...]

  def body(j, carry):
    start = pl.multiple_of(j * bk, bk)
    q_seg, kv_seg = _gpu_seg(qs_ref, ks_ref, i * bq, start, bq, bk)
    mask = _tile_mask((bq, bk), i * bq, start, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=q_seg, kv_seg=kv_seg)
    return _fwd_tile(q, k_ref[pl.ds(start, bk), :], v_ref[pl.ds(start, bk), :], *carry,
                     plan.scale, mask)

  init = (jnp.full((bq, 1), -jnp.inf, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, plan.head_dim), jnp.float32))
  stop = _last_kv_block(i, bq, bk, nk) + 1 if plan.causal else nk
  m, l, acc = lax.fori_loop(0, stop, body, init)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _gpu_specs(plan, has_seg, q_spec, kv_index):
  """[q_spec, full-length k and v of head kv_index(*grid), whole segment-id rows]."""
  def kv_map(*g):
    b, h = kv_index(*g)
    return b, h, 0, 0

  def seg_map(*g):
    return g[0], 0

  kv_spec = pl.BlockSpec((None, None, plan.kv_pad, plan.head_dim), kv_map)
  specs = [q_spec, kv_spec, kv_spec]
  if has_seg:
    specs += [pl.BlockSpec((None, plan.q_pad), seg_map), pl.BlockSpec((None, plan.kv_pad), seg_map)]
  return specs


def _triton_params(plan, backward=False):
  from jax.experimental.pallas import triton as pltriton
  warps, stages = plan.gpu_launch[2:] if backward else plan.gpu_launch[:2]
  return pltriton.CompilerParams(num_warps=warps, num_stages=stages)


def _gpu_fwd(plan, q, k, v, q_seg, kv_seg):
  b = q.shape[0]
  g = plan.group
  has_seg = q_seg is not None
  q_spec = pl.BlockSpec((None, None, plan.bq, plan.head_dim), lambda bi, h, i: (bi, h, i, 0))
  in_specs = _gpu_specs(plan, has_seg, q_spec, lambda bi, h, i: (bi, h // g))
  args = [q, k, v] + ([q_seg, kv_seg] if has_seg else [])
  return pl.pallas_call(
      functools.partial(_gpu_fwd_kernel, plan=plan, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, plan.heads, plan.q_pad, 1), jnp.float32)),
      grid=(b, plan.heads, plan.q_pad // plan.bq),
      in_specs=in_specs,
      out_specs=(pl.BlockSpec((None, None, plan.bq, plan.head_dim), lambda bi, h, i: (bi, h, i, 0)),
                 pl.BlockSpec((None, None, plan.bq, 1), lambda bi, h, i: (bi, h, i, 0))),
      compiler_params=_triton_params(plan),
      interpret=plan.interpret,
      name="flash_attention_fwd_gpu",
  )(*args)


def _gpu_dkv_kernel(*refs, plan, has_seg):
  if has_seg:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    qs_ref = ks_ref = None
  j = pl.program_id(2)
  bq, bk = plan.bq_bwd, plan.bk_bwd
  nq = plan.q_pad // bq
  kv = pl.ds(pl.multiple_of(j * bk, bk), bk)
  k, v = k_ref[kv, :], v_ref[kv, :]
  start_i = _first_q_block(j, bq, bk, nq) if plan.causal else 0

  def body(i, carry, h):
    dk, dv = carry
    rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
    q, do = q_ref[h, rows, :], do_ref[h, rows, :]
    q_seg, kv_seg = _gpu_seg(qs_ref, ks_ref, i * bq, j * bk, bq, bk)
    mask = _tile_mask((bq, bk), i * bq, j * bk, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=q_seg, kv_seg=kv_seg)
    p, ds = _bwd_tile(q, k, v, do, lse_ref[h, rows, :], delta_ref[h, rows, :], plan.scale, mask)
    dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN, preferred_element_type=jnp.float32)
    dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN, preferred_element_type=jnp.float32)
    return dk, dv

  carry = (jnp.zeros((bk, plan.head_dim), jnp.float32),) * 2
  for h in range(plan.group):  # the query heads sharing this kv head
    carry = lax.fori_loop(start_i, nq, functools.partial(body, h=h), carry)
  dk_ref[...] = carry[0].astype(dk_ref.dtype)
  dv_ref[...] = carry[1].astype(dv_ref.dtype)


def _gpu_dq_kernel(*refs, plan, has_seg):
  if has_seg:
    q_ref, k_ref, v_ref, qs_ref, ks_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
  else:
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref = refs
    qs_ref = ks_ref = None
  i = pl.program_id(2)
  bq, bk = plan.bq_bwd, plan.bk_bwd
  nk = plan.kv_pad // bk
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

  def body(j, dq):
    start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    q_seg, kv_seg = _gpu_seg(qs_ref, ks_ref, i * bq, start, bq, bk)
    mask = _tile_mask((bq, bk), i * bq, start, causal=plan.causal, kv_len=plan.kv_len_mask,
                      q_seg=q_seg, kv_seg=kv_seg)
    _, ds = _bwd_tile(q, k, v_ref[pl.ds(start, bk), :], do, lse, delta, plan.scale, mask)
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  stop = _last_kv_block(i, bq, bk, nk) + 1 if plan.causal else nk
  dq = lax.fori_loop(0, stop, body, jnp.zeros((bq, plan.head_dim), jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _gpu_bwd(plan, q, k, v, q_seg, kv_seg, do, lse, delta):
  b = q.shape[0]
  g, d = plan.group, plan.head_dim
  bq, bk = plan.bq_bwd, plan.bk_bwd
  has_seg = q_seg is not None
  seg_args = [q_seg, kv_seg] if has_seg else []

  # dk, dv: one program per kv block, reading the group's query heads whole.
  def grp_rows(bi, hk, j):
    return bi, hk, 0, 0
  in_specs = _gpu_specs(plan, has_seg, pl.BlockSpec((None, g, plan.q_pad, d), grp_rows),
                        lambda bi, hk, j: (bi, hk))
  in_specs += [pl.BlockSpec((None, g, plan.q_pad, d), grp_rows),
               pl.BlockSpec((None, g, plan.q_pad, 1), grp_rows),
               pl.BlockSpec((None, g, plan.q_pad, 1), grp_rows)]
  kv_out = pl.BlockSpec((None, None, bk, d), lambda bi, hk, j: (bi, hk, j, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_gpu_dkv_kernel, plan=plan, has_seg=has_seg),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(b, plan.kv_heads, plan.kv_pad // bk),
      in_specs=in_specs,
      out_specs=(kv_out, kv_out),
      compiler_params=_triton_params(plan, backward=True),
      interpret=plan.interpret,
      name="flash_attention_dkv_gpu",
  )(q, k, v, *seg_args, do, lse, delta)

  def row_map(bi, h, i):
    return bi, h, i, 0
  in_specs = _gpu_specs(plan, has_seg, pl.BlockSpec((None, None, bq, d), row_map),
                        lambda bi, h, i: (bi, h // g))
  in_specs += [pl.BlockSpec((None, None, bq, d), row_map),
               pl.BlockSpec((None, None, bq, 1), row_map),
               pl.BlockSpec((None, None, bq, 1), row_map)]
  dq = pl.pallas_call(
      functools.partial(_gpu_dq_kernel, plan=plan, has_seg=has_seg),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(b, plan.heads, plan.q_pad // bq),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, None, bq, d), row_map),
      compiler_params=_triton_params(plan, backward=True),
      interpret=plan.interpret,
      name="flash_attention_dq_gpu",
  )(q, k, v, *seg_args, do, lse, delta)
  return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# custom_vjp over laid-out, padded arrays (padding and transposes differentiate as usual).


def _row_delta(plan, o, do):
  """rowsum(dO * O) as [B, H, Lq, 1] float32: the softmax term of the backward."""
  prod = o.astype(jnp.float32) * do.astype(jnp.float32)
  if plan.fused:
    b, lq = prod.shape[:2]
    return jnp.sum(prod.reshape(b, lq, plan.heads, plan.head_dim), -1).transpose(0, 2, 1)[..., None]
  return jnp.sum(prod, -1, keepdims=True)


def _forward(plan, q, k, v, q_seg, kv_seg):
  if plan.backend == "gpu":
    return _gpu_fwd(plan, q, k, v, q_seg, kv_seg)
  return _tpu_fwd(plan, q, k, v, q_seg, kv_seg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan, q, k, v, q_seg, kv_seg):
  return _forward(plan, q, k, v, q_seg, kv_seg)[0]


def _attend_fwd(plan, q, k, v, q_seg, kv_seg):
  o, lse = _forward(plan, q, k, v, q_seg, kv_seg)
  return o, (q, k, v, q_seg, kv_seg, o, lse)


def _attend_bwd(plan, res, do):
  q, k, v, q_seg, kv_seg, o, lse = res
  delta = _row_delta(plan, o, do)
  if plan.backend == "gpu":
    dq, dk, dv = _gpu_bwd(plan, q, k, v, q_seg, kv_seg, do, lse, delta)
  else:
    dk, dv = _tpu_dkv(plan, q, k, v, q_seg, kv_seg, do, lse, delta)
    dq = _tpu_dq(plan, q, k, v, q_seg, kv_seg, do, lse, delta)
  return dq, dk, dv, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# ---------------------------------------------------------------------------------------------
# Dispatch.


def _pad_seq(a, length, axis=1, value=0):
  if a.shape[axis] == length:
    return a
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, length - a.shape[axis])
  return jnp.pad(a, pad, constant_values=value)


def flash_attention(q, k, v, *, causal=True, segment_ids=None, impl="auto", interpret=False,
                    block_sizes=None, platform=None):
  """softmax(q k^T / sqrt(d)) v with the project's causal and segment mask.

  q: [B, Lq, H, D]; k, v: [B, Lk, K, D] with H % K == 0. segment_ids: int32 [B, L] (needs
  Lq == Lk) or None (one segment). causal: keys at slots <= the query's slot only. impl: 'auto'
  (Pallas on TPU/GPU, the reference on CPU), 'xla' (the reference), 'pallas'. interpret: run the
  Pallas kernels in interpret mode (True, or pltpu.InterpretParams for the TPU simulator).
  platform: which Pallas kernels to build ('tpu' or 'gpu'; default: the default backend, the TPU
  kernels when interpreting on CPU), e.g. 'tpu' when compiling ahead of time from a CPU host.
  Differentiable in q, k, v (custom VJP: Pallas backward kernels).
  """
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0] \
      or q.shape[3] != k.shape[3]:
    raise ValueError(f"expected q [B, Lq, H, D] and k, v [B, Lk, K, D]; got {q.shape}, "
                     f"{k.shape}, {v.shape}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  b, lq, h, d = q.shape
  lk, hk = k.shape[1], k.shape[2]
  if h % hk:
    raise ValueError(f"query heads {h} not a multiple of key/value heads {hk}")
  if segment_ids is not None and (lq != lk or segment_ids.shape != (b, lq)):
    raise ValueError(f"segment_ids {segment_ids.shape} needs shape [B, L] with Lq == Lk "
                     f"({lq}, {lk})")
  path = resolve_impl(impl, platform, interpret)
  if path == "xla":
    return flash_attention_reference(q, k, v, causal=causal, segment_ids=segment_ids)

  bs = block_sizes or FlashBlockSizes()
  if path == "gpu":
    d_lay = max(16, pl.next_power_of_2(d))  # Triton: power-of-two dims, dots need >= 16
    bq, bq_bwd = (min(x, max(16, pl.next_power_of_2(lq))) for x in (bs.gpu_block_q,
                                                                   bs.gpu_block_q_bwd))
    bk, bk_bwd = (min(x, max(16, pl.next_power_of_2(lk))) for x in (bs.gpu_block_kv,
                                                                   bs.gpu_block_kv_bwd))
    fused = False
    # Powers of two: the larger of the forward and backward tiles is a multiple of both.
    q_pad, kv_pad = _round_up(lq, max(bq, bq_bwd)), _round_up(lk, max(bk, bk_bwd))
  else:
    d_lay = d
    bq, bq_bwd = (min(x, _round_up(lq, 128)) for x in (bs.block_q, bs.block_q_bwd))
    bk, bk_bwd = (min(x, _round_up(lk, 128)) for x in (bs.block_kv, bs.block_kv_bwd))
    q_pad, kv_pad = _round_up(lq, math.lcm(bq, bq_bwd)), _round_up(lk, math.lcm(bk, bk_bwd))
    fused = d % 128 == 0
  plan = _Plan(causal=bool(causal), scale=1.0 / math.sqrt(d), heads=h, kv_heads=hk,
               head_dim=d_lay, q_len=lq, kv_len=lk, q_pad=q_pad, kv_pad=kv_pad, bq=bq, bk=bk,
               bq_bwd=bq_bwd, bk_bwd=bk_bwd, fused=fused, backend=path, interpret=interpret,
               gpu_launch=(bs.gpu_num_warps, bs.gpu_num_stages, bs.gpu_num_warps_bwd,
                           bs.gpu_num_stages_bwd))

  def lay_out(x, length):
    x = _pad_seq(x, length)
    if d_lay != d:
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, d_lay - d)))
    if fused:
      return x.reshape(x.shape[0], length, -1)
    return x.transpose(0, 2, 1, 3)

  q_seg = kv_seg = None
  if segment_ids is not None:
    seg = segment_ids.astype(jnp.int32)
    if path == "gpu":
      q_seg, kv_seg = _pad_seq(seg, q_pad), _pad_seq(seg, kv_pad)
    else:
      q_seg, kv_seg = _pad_seq(seg, q_pad)[:, :, None], _pad_seq(seg, kv_pad)[:, None, :]
  o = _attend(plan, lay_out(q, q_pad), lay_out(k, kv_pad), lay_out(v, kv_pad), q_seg, kv_seg)
  o = o.reshape(b, q_pad, h, d_lay) if fused else o.transpose(0, 2, 1, 3)
  return o[:, :lq, :, :d]


def flash_attention_sharded(q, k, v, mesh, *, batch_axes, head_axes=None, segment_ids=None,
                            **kwargs):
  """flash_attention with batch sharded over `batch_axes` and (optionally) heads over
  `head_axes`, inside jax.shard_map (`dispatch.shard_attention`): Mosaic kernels cannot be
  partitioned automatically. The Pallas platform follows the mesh's devices (so this also
  compiles ahead of time for TPU descriptions).
  """
  if "platform" not in kwargs:  # (setdefault would read .devices, which abstract meshes lack)
    kwargs["platform"] = mesh.devices.flat[0].platform
  return shard_attention(functools.partial(flash_attention, **kwargs), q, k, v, mesh,
                         batch_axes=batch_axes, head_axes=head_axes, segment_ids=segment_ids)
