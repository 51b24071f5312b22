// Fused causal, segment-masked attention for the CPU: the forward and backward as XLA FFI
// custom calls (kernels/cpu_attention.py builds, loads and differentiates them).
//
// Why hand-written: XLA's CPU backend runs attention as separate dots and reductions over the
// [heads, T, T] float32 scores, one pass over memory each, and on the issue-8 train step that
// cost twice PyTorch's fused SDPA per layer (docs/results.md, 2026-11-28). No library JAX links
// offers a fused CPU attention. Here each task holds one head's rows of scores in L1/L2 while it
// computes them, masks them, exponentiates them and multiplies them out.
//
// Layout as the model's: q [B, T, N, D], k and v [B, T, K, D] (K divides N: grouped-query
// heads), segment ids int32 [B, T] (a key is visible to a query at or after it in the same
// segment). float32; D a multiple of 16 (a 16-lane vector). The scale is 1/sqrt(D).
// Outputs: o [B, T, N, D] and the log-sum-exp [B, N, T] the backward recomputes scores from.
//
// Work is split over (batch, head) tasks on XLA's intra-op thread pool: the forward per query
// head, the backward per key/value head (so a group's dK and dV sum in one task's buffers).
// Vectors are GCC/Clang vector extensions, which compile to AVX-512, AVX2 or NEON alike.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
constexpr int kRows = 16;  // query rows per block: 16 accumulator vectors of scores
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Load(const float* p) { Vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
inline IVec LoadI(const int32_t* p) { IVec v; std::memcpy(&v, p, sizeof v); return v; }
inline Vec Splat(float x) { return Vec{} + x; }
inline IVec Iota() { IVec v; for (int i = 0; i < kLanes; ++i) v[i] = i; return v; }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (scores minus their row's max or log-sum-exp): Cody-Waite range reduction
// and Cephes' degree-5 polynomial, within 2 ulp; exactly 0 below float's range (masked -inf).
inline Vec Exp(Vec x) {
  const Vec lo = Splat(-87.33654f);
  IVec under = x < lo;
  x = under ? lo : x;
  x = x > Splat(0.0f) ? Splat(0.0f) : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  Vec n = (x * 1.44269504088896341f + magic) - magic;
  Vec r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  Vec p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  Vec y = p * r * r + r + 1.0f;
  IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return under ? Splat(0.0f) : y * two_n;
}

inline float HMax(Vec v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}

inline float HSum(Vec v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

struct Dims {
  int64_t b, t, n, k, d;
  int64_t tp;  // t rounded up to whole vectors
  float scale;
  int64_t group() const { return n / k; }
  int64_t q_at(int64_t bi, int64_t ti, int64_t ni) const { return ((bi * t + ti) * n + ni) * d; }
  int64_t kv_at(int64_t bi, int64_t ti, int64_t hi) const { return ((bi * t + ti) * k + hi) * d; }
};

// Below this many multiply-adds a call runs on the calling thread alone: waking a pool thread
// cost about 0.35 ms, more than a 1 x 16-token call's whole work (tools/bench_cpu_attention.py).
constexpr int64_t kMinParallelWork = int64_t{1} << 22;

// Runs fn(0..count-1) on the caller and, when the work (`task_work` multiply-adds each) is worth
// it, the pool's threads; returns when all have finished. The caller works too, so progress
// never waits on a pool thread being free.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, int64_t task_work, const Fn& fn) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  // A helper that starts after the last task holds only `shared` alive and returns at once
  // without touching `fn`.
  auto work = [shared, count, &fn]() {
    for (int64_t i; (i = shared->next.fetch_add(1)) < count;) {
      fn(i);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = count * task_work < kMinParallelWork
                        ? 0 : std::min<int64_t>(pool.num_threads(), count - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (shared->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// One head's keys, values and segments, repacked for the vector loops: kt [D][tp] (transposed:
// a vector holds 16 keys), vr [tp][D] (rows), seg [tp]; for the backward also vt [D][tp] and
// kr [tp][D]. Padding is zero (segment -1).
struct HeadKV {
  std::vector<float> kt, vt, kr, vr;
  std::vector<int32_t> seg;
  void Pack(const Dims& dm, const float* k, const float* v, const int32_t* seg_ids, int64_t bi,
            int64_t hi, bool backward) {
    kt.assign(dm.d * dm.tp, 0.0f);
    vr.assign(dm.tp * dm.d, 0.0f);
    if (backward) {
      vt.assign(dm.d * dm.tp, 0.0f);
      kr.assign(dm.tp * dm.d, 0.0f);
    }
    seg.assign(dm.tp, -1);
    for (int64_t t = 0; t < dm.t; ++t) {
      const float* kp = k + dm.kv_at(bi, t, hi);
      const float* vp = v + dm.kv_at(bi, t, hi);
      for (int64_t d = 0; d < dm.d; ++d) {
        kt[d * dm.tp + t] = kp[d];
        vr[t * dm.d + d] = vp[d];
        if (backward) {
          vt[d * dm.tp + t] = vp[d];
          kr[t * dm.d + d] = kp[d];
        }
      }
      seg[t] = seg_ids[bi * dm.t + t];
    }
  }
};

// out[r][tile] = rows[r] . cols[:, tile] for one tile of 16 keys, kRows rows: rows [kRows][D],
// cols [D][tp]. Masked (causal in slots from row0, same segment) entries become -inf.
template <int ND>
inline void ScoreTile(const float* rows, const float* cols, int64_t tp, int64_t tile,
                      int64_t row0, const int32_t* row_seg, const int32_t* col_seg, float* out,
                      int64_t out_stride) {
  constexpr int D = ND * kLanes;
  Vec acc[kRows];
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) acc[r] = Splat(0.0f);
  for (int d = 0; d < D; ++d) {
    Vec c = Load(cols + d * tp + tile);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) acc[r] += Splat(rows[r * D + d]) * c;
  }
  IVec pos = Iota() + static_cast<int32_t>(tile);
  IVec cseg = LoadI(col_seg + tile);
#pragma GCC unroll 16
  for (int r = 0; r < kRows; ++r) {
    IVec visible = (pos <= static_cast<int32_t>(row0 + r)) & (cseg == row_seg[r]);
    Store(out + r * out_stride + tile, visible ? acc[r] : Splat(kNegInf));
  }
}

// out[r] = sum_j w[r][j] * m[j] over j < cols, for `rows` rows of w [.][stride] and m [.][D].
template <int ND>
inline void WeightedRows(const float* w, int64_t stride, int rows, const float* m, int64_t cols,
                         float* out, int64_t out_stride, const float* row_scale) {
  constexpr int D = ND * kLanes;
  constexpr int R = kRows / ND;  // R x ND accumulators stay in registers
  for (int r0 = 0; r0 < rows; r0 += R) {
    Vec acc[R][ND];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
      for (int e = 0; e < ND; ++e) acc[r][e] = Splat(0.0f);
    for (int64_t j = 0; j < cols; ++j) {
      Vec mj[ND];
      for (int e = 0; e < ND; ++e) mj[e] = Load(m + j * D + e * kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        Vec wr = Splat(w[(r0 + r) * stride + j]);
        for (int e = 0; e < ND; ++e) acc[r][e] += wr * mj[e];
      }
    }
    for (int r = 0; r < R && r0 + r < rows; ++r)
      for (int e = 0; e < ND; ++e)
        Store(out + (r0 + r) * out_stride + e * kLanes, acc[r][e] * row_scale[r0 + r]);
  }
}

// acc[j] += sum_r w[r][j] * m[r] for j < cols (a multiple of 16), r < rows: w [.][stride],
// m [rows][D], acc [.][D]. The transposed product of dV and dK.
template <int ND>
inline void AccumulateColumns(const float* w, int64_t stride, int rows, const float* m,
                              int64_t cols, float* acc_rows) {
  constexpr int D = ND * kLanes;
  constexpr int J = kRows / ND;
  for (int64_t j0 = 0; j0 < cols; j0 += J) {
    Vec acc[J][ND];
#pragma GCC unroll 16
    for (int j = 0; j < J; ++j)
      for (int e = 0; e < ND; ++e) acc[j][e] = Load(acc_rows + (j0 + j) * D + e * kLanes);
    for (int r = 0; r < rows; ++r) {
      Vec mr[ND];
      for (int e = 0; e < ND; ++e) mr[e] = Load(m + r * D + e * kLanes);
#pragma GCC unroll 16
      for (int j = 0; j < J; ++j) {
        Vec wj = Splat(w[r * stride + j0 + j]);
        for (int e = 0; e < ND; ++e) acc[j][e] += wj * mr[e];
      }
    }
    for (int j = 0; j < J; ++j)
      for (int e = 0; e < ND; ++e) Store(acc_rows + (j0 + j) * D + e * kLanes, acc[j][e]);
  }
}

// A block of kRows query rows of one head: scaled q rows, segments, and (backward) dO rows.
struct RowBlock {
  int rows;
  int64_t row0, keys, tiles;  // keys 0..keys-1 are causal-visible; tiles of 16 cover them
  float q[kRows * 128];
  int32_t seg[kRows];
};

template <int ND>
void LoadRowBlock(const Dims& dm, const float* q, const int32_t* seg_ids, int64_t bi, int64_t ni,
                  int64_t row0, RowBlock& blk) {
  constexpr int D = ND * kLanes;
  blk.row0 = row0;
  blk.rows = static_cast<int>(std::min<int64_t>(kRows, dm.t - row0));
  blk.keys = row0 + blk.rows;
  blk.tiles = (blk.keys + kLanes - 1) / kLanes;
  for (int r = 0; r < kRows; ++r) {
    bool real = r < blk.rows;
    const float* qp = real ? q + dm.q_at(bi, row0 + r, ni) : nullptr;
    for (int d = 0; d < D; ++d) blk.q[r * D + d] = real ? qp[d] * dm.scale : 0.0f;
    blk.seg[r] = real ? seg_ids[bi * dm.t + row0 + r] : -1;  // -1 matches no key: row masked
  }
}

template <int ND>
void ForwardHead(const Dims& dm, const float* q, const float* k, const float* v,
                 const int32_t* seg_ids, float* o, float* lse, int64_t task) {
  constexpr int D = ND * kLanes;
  const int64_t bi = task / dm.n, ni = task % dm.n;
  HeadKV kv;
  kv.Pack(dm, k, v, seg_ids, bi, ni / dm.group(), false);
  std::vector<float> p(kRows * dm.tp);
  RowBlock blk;
  float inv_sum[kRows];
  for (int64_t row0 = 0; row0 < dm.t; row0 += kRows) {
    LoadRowBlock<ND>(dm, q, seg_ids, bi, ni, row0, blk);
    for (int64_t tile = 0; tile < blk.tiles * kLanes; tile += kLanes)
      ScoreTile<ND>(blk.q, kv.kt.data(), dm.tp, tile, row0, blk.seg, kv.seg.data(), p.data(),
                    dm.tp);
    for (int r = 0; r < blk.rows; ++r) {
      float* pr = p.data() + r * dm.tp;
      Vec mv = Splat(kNegInf);
      for (int64_t j = 0; j < blk.tiles * kLanes; j += kLanes) {
        Vec x = Load(pr + j);
        mv = x > mv ? x : mv;
      }
      float m = HMax(mv);  // finite: a row always sees its own slot
      Vec sv = Splat(0.0f);
      for (int64_t j = 0; j < blk.tiles * kLanes; j += kLanes) {
        Vec e = Exp(Load(pr + j) - m);
        Store(pr + j, e);
        sv += e;
      }
      float s = HSum(sv);
      inv_sum[r] = 1.0f / s;
      lse[(bi * dm.n + ni) * dm.t + row0 + r] = m + std::log(s);
    }
    WeightedRows<ND>(p.data(), dm.tp, blk.rows, kv.vr.data(), blk.keys,
                     o + dm.q_at(bi, row0, ni), dm.n * D, inv_sum);
  }
}

template <int ND>
void BackwardHead(const Dims& dm, const float* q, const float* k, const float* v,
                  const int32_t* seg_ids, const float* o, const float* lse, const float* d_o,
                  float* dq, float* dk, float* dv, int64_t task) {
  constexpr int D = ND * kLanes;
  const int64_t bi = task / dm.k, hi = task % dm.k;
  HeadKV kv;
  kv.Pack(dm, k, v, seg_ids, bi, hi, true);
  std::vector<float> p(kRows * dm.tp), ds(kRows * dm.tp);
  std::vector<float> dk_acc(dm.tp * D, 0.0f), dv_acc(dm.tp * D, 0.0f);
  RowBlock blk;
  float dob[kRows * D], delta[kRows], row_lse[kRows], scale[kRows];
  std::fill(scale, scale + kRows, dm.scale);
  for (int64_t g = 0; g < dm.group(); ++g) {
    const int64_t ni = hi * dm.group() + g;
    for (int64_t row0 = 0; row0 < dm.t; row0 += kRows) {
      LoadRowBlock<ND>(dm, q, seg_ids, bi, ni, row0, blk);
      for (int r = 0; r < kRows; ++r) {
        bool real = r < blk.rows;
        const float* dop = real ? d_o + dm.q_at(bi, row0 + r, ni) : nullptr;
        const float* op = real ? o + dm.q_at(bi, row0 + r, ni) : nullptr;
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) {
          dob[r * D + d] = real ? dop[d] : 0.0f;
          if (real) dot += dop[d] * op[d];
        }
        delta[r] = dot;  // sum_j P dP = dO . O: the softmax gradient's row term
        row_lse[r] = real ? lse[(bi * dm.n + ni) * dm.t + row0 + r] : 0.0f;
      }
      for (int64_t tile = 0; tile < blk.tiles * kLanes; tile += kLanes) {
        ScoreTile<ND>(blk.q, kv.kt.data(), dm.tp, tile, row0, blk.seg, kv.seg.data(), p.data(),
                      dm.tp);
        // dP = dO V^T; its mask is P's (a masked P is 0, and so is its dS).
        ScoreTile<ND>(dob, kv.vt.data(), dm.tp, tile, row0, blk.seg, kv.seg.data(), ds.data(),
                      dm.tp);
        for (int r = 0; r < kRows; ++r) {
          float* pr = p.data() + r * dm.tp + tile;
          float* dsr = ds.data() + r * dm.tp + tile;
          Vec pv = Exp(Load(pr) - row_lse[r]);
          Vec dp = Load(dsr);
          IVec masked = dp == Splat(kNegInf);
          Store(pr, pv);
          Store(dsr, masked ? Splat(0.0f) : pv * (dp - delta[r]));
        }
      }
      // dQ = scale * dS K; dV += P^T dO; dK += dS^T (scale * Q).
      WeightedRows<ND>(ds.data(), dm.tp, blk.rows, kv.kr.data(), blk.keys,
                       dq + dm.q_at(bi, row0, ni), dm.n * D, scale);
      AccumulateColumns<ND>(p.data(), dm.tp, blk.rows, dob, blk.tiles * kLanes, dv_acc.data());
      AccumulateColumns<ND>(ds.data(), dm.tp, blk.rows, blk.q, blk.tiles * kLanes,
                            dk_acc.data());
    }
  }
  for (int64_t t = 0; t < dm.t; ++t)
    for (int64_t d = 0; d < D; ++d) {
      dk[dm.kv_at(bi, t, hi) + d] = dk_acc[t * D + d];
      dv[dm.kv_at(bi, t, hi) + d] = dv_acc[t * D + d];
    }
}

ffi::Error CheckDims(ffi::Span<const int64_t> qd, ffi::Span<const int64_t> kd,
                     ffi::Span<const int64_t> vd, ffi::Span<const int64_t> sd, Dims& dm) {
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || sd.size() != 2)
    return ffi::Error::InvalidArgument("cpu_attention: expected q, k, v of rank 4, segments of rank 2");
  dm = Dims{qd[0], qd[1], qd[2], kd[2], qd[3], 0, 0.0f};
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i]) return ffi::Error::InvalidArgument("cpu_attention: k and v shapes differ");
  if (kd[0] != dm.b || kd[1] != dm.t || kd[3] != dm.d || sd[0] != dm.b || sd[1] != dm.t)
    return ffi::Error::InvalidArgument("cpu_attention: q, k, v, segment shapes disagree");
  if (dm.k <= 0 || dm.n % dm.k)
    return ffi::Error::InvalidArgument("cpu_attention: key/value heads must divide query heads");
  dm.tp = (dm.t + kLanes - 1) / kLanes * kLanes;
  dm.scale = 1.0f / std::sqrt(static_cast<float>(dm.d));
  return ffi::Error::Success();
}

// Calls fn(std::integral_constant<int, D / 16>) for the supported head dims.
template <typename Fn>
ffi::Error ByHeadVectors(int64_t d, Fn&& fn) {
  switch (d / kLanes) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    default:
      return ffi::Error::InvalidArgument("cpu_attention: head_dim must be 16, 32, 64 or 128");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  Dims dm;
  ffi::Error checked = CheckDims(q.dimensions(), k.dimensions(), v.dimensions(),
                                 seg.dimensions(), dm);
  if (checked.failure()) return checked;
  return ByHeadVectors(dm.d, [&](auto nd) {
    ParallelFor(pool, dm.b * dm.n, dm.tp * dm.tp * dm.d, [&](int64_t task) {
      ForwardHead<decltype(nd)::value>(dm, q.typed_data(), k.typed_data(), v.typed_data(),
                                       seg.typed_data(), o->typed_data(), lse->typed_data(),
                                       task);
    });
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::F32> o,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> d_o,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Dims dm;
  ffi::Error checked = CheckDims(q.dimensions(), k.dimensions(), v.dimensions(),
                                 seg.dimensions(), dm);
  if (checked.failure()) return checked;
  return ByHeadVectors(dm.d, [&](auto nd) {
    ParallelFor(pool, dm.b * dm.k, dm.group() * dm.tp * dm.tp * dm.d * 2, [&](int64_t task) {
      BackwardHead<decltype(nd)::value>(dm, q.typed_data(), k.typed_data(), v.typed_data(),
                                        seg.typed_data(), o.typed_data(), lse.typed_data(),
                                        d_o.typed_data(), dq->typed_data(), dk->typed_data(),
                                        dv->typed_data(), task);
    });
  });
}

// What both calls take first: the thread pool, q, k, v and the segment ids.
auto BindAttentionInputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::S32>>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnimodalCpuAttentionForward, Forward,
                              BindAttentionInputs()
                                  .Ret<ffi::Buffer<ffi::F32>>()    // o
                                  .Ret<ffi::Buffer<ffi::F32>>());  // log-sum-exp

XLA_FFI_DEFINE_HANDLER_SYMBOL(UnimodalCpuAttentionBackward, Backward,
                              BindAttentionInputs()
                                  .Arg<ffi::Buffer<ffi::F32>>()    // o
                                  .Arg<ffi::Buffer<ffi::F32>>()    // log-sum-exp
                                  .Arg<ffi::Buffer<ffi::F32>>()    // dO
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()    // dk
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dv
