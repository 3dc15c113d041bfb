// Matrix products and NHWC convolutions with a pre-packed constant weight, as XLA FFI
// custom calls (CPU): autofuse's own GEMM, with bias, residual add and clamp fused; and,
// on the same tiles and threads, attention between [B, S, H, D] values, NHWC max pooling
// and layer normalization (see their sections below).
//
//   AutofuseGemm      x f32 [M, K], w f32 [K * P * 32], bias f32 [N], residual? f32 [M, N] -> y f32 [M, N]
//   AutofuseConvNHWC  x f32 [B, H, W, C], w f32 [K * P * 32] (K = KH*KW*C), bias f32 [N],
//                     residual? f32 [B, OH, OW, N] -> y f32 [B, OH, OW, N]
//                     attributes: kh, kw, sh, sw, ph, pw, dh, dw (top/left padding; the
//                     output shape fixes the rest)
//   both              attributes lo, hi: y = min(max(y, lo), hi) after the bias and the residual
//                     (ReLU is lo = 0, hi = inf; ReLU6 lo = 0, hi = 6; NaN stays NaN)
//
// The weight is packed once, when the model is rewritten (autofuse/gemm.py, pack_weight):
// P = ceil(N / 32) panels of 32 output columns, zero-padded past N, stored block by
// block of kKC reduction rows: within a block, panel after panel, each kc rows of 32
// contiguous floats. So the weight a block of the product reads is one contiguous
// stream, which the hardware prefetchers follow from memory (weights are usually cold:
// a model's weights do not fit the caches).
//
// A convolution is a GEMM whose rows are output pixels and whose reduction runs over
// (kh, kw, c): its rows of "A" are gathered from the input while packing (implicit
// im2col), so the patch matrix is never written to memory.
//
// Blocking (Goto/BLIS): for every block of NC columns and KC reductions, 12 rows of A
// are copied into a [12][KC] buffer (it stays in L1; a compile-time row stride lets
// the twelve broadcasts address it from one pointer) and multiplied with each 32-column
// panel of the block (KC x NC floats, kept in L2) by a 12x32 register tile: 24 zmm
// accumulators, two weight loads and twelve broadcasts per step of k (a block's last
// rows take an 8- or 4-row tile when they fit one). The product is
// cut into parts along M (multiples of 12 rows) or N (multiples of 32 columns),
// whichever re-reads less, one part per thread (XLA's intra-op threads and the calling
// thread, from an atomic counter): finer parts would let a thread that the OS takes
// away delay less, but each part re-packs A or re-reads the weight, which measured
// 2-15% slower on 2 cores. CPUs without AVX-512 run the same blocking with plain C++
// loops (correct, not fast).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMR = 12;   // rows per register tile
constexpr int64_t kNR = 32;   // columns per panel (two zmm)
constexpr int64_t kKC = 256;  // reduction block (autofuse/gemm.py packs weights with the same)
constexpr int64_t kNC = 1024;  // column block (a multiple of kNR)
constexpr int64_t kPrefetchRows = 32;  // weight rows fetched ahead (4 KiB, ~ a memory latency of work)
constexpr int64_t kMinParallelMacs = 1 << 17;
constexpr int64_t kPartsPerThread = 1;
constexpr int kSpins = 1000;  // pauses before a waiting caller blocks (tens of microseconds)

// Where the tile's rows come from and where they go.
struct Epilogue {
  const float* bias;      // [N]
  const float* residual;  // [M, N] or nullptr
  float lo, hi;           // the clamp; -inf and inf when there is none
};

#if defined(__AVX512F__)
// C[rows, cols] (+)= Ap[kc][MR] @ Bp[kc][32] with an MR x 32 register tile; rows <= MR, cols <= 32.
// first: start from the bias (else from C); last: add the residual and clamp.
template <int MR>
void TileRows(const float* ap, const float* bp, int64_t kc, float* c, int64_t ldc, int64_t rows, int64_t cols,
              bool first, bool last, const float* bias, const float* residual, float lo, float hi) {
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols <= 16 ? __mmask16(0) : __mmask16((1u << (cols - 16)) - 1);
  __m512 acc0[MR], acc1[MR];
  if (first) {
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bias), b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc0[r] = b0, acc1[r] = b1;
  } else {
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const float* row = c + (r < rows ? r : 0) * ldc;
      acc0[r] = _mm512_maskz_loadu_ps(m0, row);
      acc1[r] = _mm512_maskz_loadu_ps(m1, row + 16);
    }
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    // The weight streams from memory the first time a block is used: ask for it ahead.
    _mm_prefetch(reinterpret_cast<const char*>(bp + (k + kPrefetchRows) * kNR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(bp + (k + kPrefetchRows) * kNR + 16), _MM_HINT_T0);
    const __m512 w0 = _mm512_loadu_ps(bp + k * kNR), w1 = _mm512_loadu_ps(bp + k * kNR + 16);
    const float* a = ap + k;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * kKC]);
      acc0[r] = _mm512_fmadd_ps(x, w0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(x, w1, acc1[r]);
    }
  }
  const bool clamp_lo = last && lo > -INFINITY, clamp_hi = last && hi < INFINITY;
  const __m512 low = _mm512_set1_ps(lo), high = _mm512_set1_ps(hi);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    if (r >= rows) break;
    __m512 y0 = acc0[r], y1 = acc1[r];
    if (last && residual != nullptr) {
      y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(m0, residual + r * ldc));
      y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(m1, residual + r * ldc + 16));
    }
    // max/min return their second operand when one is NaN: NaN propagates, as in XLA.
    if (clamp_lo) y0 = _mm512_max_ps(low, y0), y1 = _mm512_max_ps(low, y1);
    if (clamp_hi) y0 = _mm512_min_ps(high, y0), y1 = _mm512_min_ps(high, y1);
    _mm512_mask_storeu_ps(c + r * ldc, m0, y0);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, y1);
  }
}
#endif

// The tile for `rows` (<= 12) rows: the smallest of 4, 8 and 12 that holds them, so
// that an M such as 49 or 196 wastes at most 3 rows of work.
void Tile(const float* ap, const float* bp, int64_t kc, float* c, int64_t ldc, int64_t rows, int64_t cols,
          bool first, bool last, const float* bias, const float* residual, float lo, float hi) {
#if defined(__AVX512F__)
  if (rows > 8) {
    TileRows<12>(ap, bp, kc, c, ldc, rows, cols, first, last, bias, residual, lo, hi);
  } else if (rows > 4) {
    TileRows<8>(ap, bp, kc, c, ldc, rows, cols, first, last, bias, residual, lo, hi);
  } else {
    TileRows<4>(ap, bp, kc, c, ldc, rows, cols, first, last, bias, residual, lo, hi);
  }
#else
  for (int64_t r = 0; r < rows; ++r) {
    float acc[kNR];
    for (int64_t j = 0; j < kNR; ++j) acc[j] = j < cols ? (first ? bias[j] : c[r * ldc + j]) : 0.0f;
    for (int64_t k = 0; k < kc; ++k) {
      const float x = ap[r * kKC + k];
      for (int64_t j = 0; j < kNR; ++j) acc[j] += x * bp[k * kNR + j];
    }
    for (int64_t j = 0; j < cols; ++j) {
      float y = acc[j];
      if (last && residual != nullptr) y += residual[r * ldc + j];
      if (last && !(y >= lo)) y = y != y ? y : lo;
      if (last && !(y <= hi)) y = y != y ? y : hi;
      c[r * ldc + j] = y;
    }
  }
#endif
}

// dst[0:n] = src[0:n] (or 0 when src is null), inline: packing copies many short runs.
inline void CopyRun(float* dst, const float* src, int64_t n) {
#if defined(__AVX512F__)
  for (; n >= 16; n -= 16, dst += 16, src += src ? 16 : 0) {
    _mm512_storeu_ps(dst, src ? _mm512_loadu_ps(src) : _mm512_setzero_ps());
  }
  if (n > 0) {
    const __mmask16 mask = __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(dst, mask, src ? _mm512_maskz_loadu_ps(mask, src) : _mm512_setzero_ps());
  }
#else
  if (src) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    std::fill(dst, dst + n, 0.0f);
  }
#endif
}

// Rows of A from a row-major matrix.
struct MatrixRows {
  const float* a;
  int64_t k;

  // ap[r][kk] = A[m0 + r, k0 + kk] for r < rows, 0 past them.
  void Pack(float* ap, int64_t m0, int64_t rows, int64_t k0, int64_t kc) const {
    for (int64_t r = 0; r < kMR; ++r) {
      CopyRun(ap + r * kKC, r < rows ? a + (m0 + r) * k + k0 : nullptr, kc);
    }
  }
};

// Rows of the (never materialised) patch matrix of an NHWC convolution: row = output
// pixel (b, oh, ow), column = (i, j, c) of the kernel window.
struct PatchRows {
  const float* x;
  int64_t h, w, c, oh, ow, kw, sh, sw, ph, pw, dh, dw;

  // Copies the absolute reduction range [a, b) of a patch row, clipped to this block
  // [k0, k0 + kc), from src (the value at a; nullptr: zeros) into the block's row.
  static void Piece(float* row, int64_t k0, int64_t kc, int64_t a, int64_t b, const float* src) {
    const int64_t lo = std::max(a, k0), hi = std::min(b, k0 + kc);
    if (lo < hi) CopyRun(row + (lo - k0), src ? src + (lo - a) : nullptr, hi - lo);
  }

  // Row r of the block = the window of output pixel m0 + r, reduction range [k0, k0 + kc),
  // copied window row by window row; no per-element index arithmetic.
  void Pack(float* ap, int64_t m0, int64_t rows, int64_t k0, int64_t kc) const {
    int64_t b = m0 / (oh * ow), oy = (m0 / ow) % oh, ox = m0 % ow;
    const int64_t span = kw * c;
    const int64_t i_first = k0 / span, i_end = kc > 0 ? (k0 + kc - 1) / span + 1 : i_first;
    for (int64_t r = 0; r < kMR; ++r) {
      float* row = ap + r * kKC;
      if (r >= rows) {
        CopyRun(row, nullptr, kc);
        continue;
      }
      const int64_t y0 = oy * sh - ph, x0 = ox * sw - pw;
      const float* image = x + b * h * w * c;
      if (dw == 1 && y0 + i_first * dh >= 0 && y0 + (i_end - 1) * dh < h && x0 >= 0 && x0 + kw <= w) {
        // The block's window rows inside the image (most pixels): one run each.
        const float* window = image + (y0 * w + x0) * c;
        for (int64_t i = i_first; i < i_end; ++i) Piece(row, k0, kc, i * span, (i + 1) * span, window + i * dh * w * c);
      } else {
        PackEdge(row, image, y0, x0, k0, kc, i_first, i_end);
      }
      if (++ox == ow) {
        ox = 0;
        if (++oy == oh) oy = 0, ++b;
      }
    }
  }

  // A row whose window crosses the image's border (or is dilated along w): per window
  // row, zeros left of the image, the pixels inside it, zeros right of it.
  void PackEdge(float* row, const float* image, int64_t y0, int64_t x0, int64_t k0, int64_t kc, int64_t i_first,
                int64_t i_end) const {
    const int64_t span = kw * c;
    // Window columns inside the image: j in [j_lo, j_hi).
    const int64_t j_lo = x0 >= 0 ? 0 : std::min(kw, (-x0 + dw - 1) / dw);
    const int64_t j_hi = std::max(j_lo, x0 >= w ? 0 : std::min(kw, (w - 1 - x0) / dw + 1));
    for (int64_t i = i_first; i < i_end; ++i) {
      const int64_t seg = i * span, iy = y0 + i * dh;
      if (iy < 0 || iy >= h || j_lo == j_hi) {
        Piece(row, k0, kc, seg, seg + span, nullptr);
        continue;
      }
      const float* line = image + iy * w * c;
      Piece(row, k0, kc, seg, seg + j_lo * c, nullptr);
      if (dw == 1) {
        Piece(row, k0, kc, seg + j_lo * c, seg + j_hi * c, line + (x0 + j_lo) * c);
      } else {
        for (int64_t j = j_lo; j < j_hi; ++j) {
          Piece(row, k0, kc, seg + j * c, seg + (j + 1) * c, line + (x0 + j * dw) * c);
        }
      }
      Piece(row, k0, kc, seg + j_hi * c, seg + span, nullptr);
    }
  }
};

struct Part {
  int64_t m0, m1, n0, n1;
};

template <typename Rows>
struct Problem {
  Rows rows;
  const float* wp;  // packed, see the top of the file
  Epilogue epilogue;
  float* c;
  int64_t m, k, n;

  void Run(const Part& part) const {
    thread_local std::vector<float, std::allocator<float>> buffer;
    if (buffer.size() < static_cast<size_t>(kKC * kMR + 16)) buffer.resize(kKC * kMR + 16);
    float* ap = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
    const int64_t panels = (n + kNR - 1) / kNR;
    for (int64_t jc = part.n0; jc < part.n1; jc += kNC) {
      const int64_t jend = std::min(part.n1, jc + kNC);
      for (int64_t pc = 0; pc < k || pc == 0; pc += kKC) {
        const int64_t kc = std::min(kKC, k - pc);
        const bool first = pc == 0, last = pc + kKC >= k;
        for (int64_t ic = part.m0; ic < part.m1; ic += kMR) {
          const int64_t count = std::min(kMR, part.m1 - ic);
          rows.Pack(ap, ic, count, pc, kc);
          for (int64_t jr = jc; jr < jend; jr += kNR) {
            const float* bp = wp + pc * panels * kNR + (jr / kNR) * kc * kNR;
            const float* residual = epilogue.residual ? epilogue.residual + ic * n + jr : nullptr;
            Tile(ap, bp, kc, c + ic * n + jr, n, count, std::min(kNR, n - jr), first, last, epilogue.bias + jr,
                 residual, epilogue.lo, epilogue.hi);
          }
        }
        if (k == 0) break;
      }
    }
  }
};

// Part `index` of `parts`: M cut in multiples of 12 rows, or N in multiples of 32 columns,
// whichever makes the parts re-read less (splitting M re-reads the weight, N re-reads A).
template <typename P>
Part Piece(const P& p, bool by_rows, int64_t index, int64_t parts) {
  if (by_rows) {
    const int64_t blocks = (p.m + kMR - 1) / kMR;
    return {std::min(p.m, kMR * (blocks * index / parts)), std::min(p.m, kMR * (blocks * (index + 1) / parts)), 0,
            p.n};
  }
  const int64_t panels = (p.n + kNR - 1) / kNR;
  return {0, p.m, std::min(p.n, kNR * (panels * index / parts)), std::min(p.n, kNR * (panels * (index + 1) / parts))};
}

template <typename P>
struct Work {
  P p;
  bool by_rows;
  int64_t parts;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void Drain() {
    for (int64_t i = next.fetch_add(1); i < parts; i = next.fetch_add(1)) {
      p.Run(Piece(p, by_rows, i, parts));
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == parts) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }

  // Spins briefly (the other parts usually end together), then blocks: on shared
  // cores a caller spinning longer takes the time the thread finishing a part needs.
  void Wait() {
    for (int spin = 0; spin < kSpins; ++spin) {
      if (done.load(std::memory_order_acquire) >= parts) return;
#if defined(__AVX512F__)
      _mm_pause();
#endif
    }
    std::unique_lock<std::mutex> lock(mutex);
    finished.wait(lock, [this] { return done.load(std::memory_order_acquire) >= parts; });
  }
};

// AUTOFUSE_GEMM_THREADS caps the threads a product is split over (default: XLA's intra-op threads).
int64_t MaxThreads() {
  static const int64_t cap = [] {
    const char* text = std::getenv("AUTOFUSE_GEMM_THREADS");
    const long long value = text ? std::atoll(text) : 0;
    return value > 0 ? static_cast<int64_t>(value) : INT64_MAX;
  }();
  return cap;
}

template <typename P>
void Execute(ffi::ThreadPool& pool, const P& problem) {
  const bool by_rows = problem.m >= problem.n;
  const int64_t blocks = by_rows ? (problem.m + kMR - 1) / kMR : (problem.n + kNR - 1) / kNR;
  const int64_t workers = std::min<int64_t>(pool.num_threads(), MaxThreads());
  const int64_t parts = workers > 1 && problem.m * problem.n * problem.k >= kMinParallelMacs
                            ? std::max<int64_t>(1, std::min(kPartsPerThread * workers, blocks))
                            : 1;
  if (parts <= 1) {
    problem.Run({0, problem.m, 0, problem.n});
    return;
  }
  auto work = std::make_shared<Work<P>>();
  work->p = problem;
  work->by_rows = by_rows;
  work->parts = parts;
  for (int64_t t = 1; t < std::min(workers, parts); ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  work->Wait();
}

// Runs `parts` parts of the problem on the pool's threads and the caller.
template <typename P>
void RunParts(ffi::ThreadPool& pool, const P& problem, int64_t parts) {
  const int64_t workers = std::min<int64_t>({static_cast<int64_t>(pool.num_threads()), MaxThreads(), parts});
  if (workers <= 1) {
    for (int64_t i = 0; i < parts; ++i) problem.Run(Piece(problem, false, i, parts));
    return;
  }
  auto work = std::make_shared<Work<P>>();
  work->p = problem;
  work->parts = parts;
  for (int64_t t = 1; t < workers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  work->Wait();
}

ffi::Error CheckWeight(ffi::Buffer<ffi::F32>& w, ffi::Buffer<ffi::F32>& bias, int64_t k, int64_t n, const char* op) {
  const auto wd = w.dimensions();
  if (wd.size() != 1 || wd[0] != k * ((n + kNR - 1) / kNR) * kNR) {
    return ffi::Error::InvalidArgument(std::string(op) + ": the packed weight must hold K * ceil(N/32) * 32 floats");
  }
  if (bias.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument(std::string(op) + ": the bias must hold N elements");
  }
  return ffi::Error::Success();
}

ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    std::optional<ffi::Buffer<ffi::F32>> residual, ffi::ResultBuffer<ffi::F32> y, float lo,
                    float hi) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0]) {
    return ffi::Error::InvalidArgument("AutofuseGemm: x must be [M, K] and y [M, N]");
  }
  const int64_t m = xd[0], k = xd[1], n = yd[1];
  if (auto error = CheckWeight(w, bias, k, n, "AutofuseGemm"); error.failure()) return error;
  if (residual.has_value() && residual->element_count() != static_cast<size_t>(m * n)) {
    return ffi::Error::InvalidArgument("AutofuseGemm: the residual must be [M, N]");
  }
  Problem<MatrixRows> problem{{x.typed_data(), k},
                              w.typed_data(),
                              {bias.typed_data(), residual.has_value() ? residual->typed_data() : nullptr, lo, hi},
                              y->typed_data(),
                              m,
                              k,
                              n};
  Execute(pool, problem);
  return ffi::Error::Success();
}

ffi::Error ConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                    std::optional<ffi::Buffer<ffi::F32>> residual, ffi::ResultBuffer<ffi::F32> y, int64_t kh,
                    int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, float lo, float hi) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0]) {
    return ffi::Error::InvalidArgument("AutofuseConvNHWC: x must be [B, H, W, C] and y [B, OH, OW, N]");
  }
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0) {
    return ffi::Error::InvalidArgument("AutofuseConvNHWC: bad window attributes");
  }
  const int64_t m = yd[0] * yd[1] * yd[2], k = kh * kw * xd[3], n = yd[3];
  if (auto error = CheckWeight(w, bias, k, n, "AutofuseConvNHWC"); error.failure()) return error;
  if (residual.has_value() && residual->element_count() != static_cast<size_t>(m * n)) {
    return ffi::Error::InvalidArgument("AutofuseConvNHWC: the residual must be shaped like y");
  }
  Problem<PatchRows> problem{{x.typed_data(), xd[1], xd[2], xd[3], yd[1], yd[2], kw, sh, sw, ph, pw, dh, dw},
                             w.typed_data(),
                             {bias.typed_data(), residual.has_value() ? residual->typed_data() : nullptr, lo, hi},
                             y->typed_data(),
                             m,
                             k,
                             n};
  Execute(pool, problem);
  return ffi::Error::Success();
}


// ------------------------------------------------------------------ attention
//
// softmax(scale * Q K^T + bias) V for every (batch, head), with Q, K, V and the output
// in [B, S, H, D] layout (the layout the projections write, so no transposes), block by
// block of 12 query rows: the scores of a block (12 x Skv) stay in L1, and K^T and V
// are packed once per head into the weight layout above, so both products run on the
// GEMM's register tile.

#if defined(__AVX512F__)
// exp(x) for x <= 0 (and NaN), to ~1e-7 relative: x = n ln2 + r, a degree-6 polynomial
// for exp(r), scaled by 2^n. Arguments below -100 give 0 (their weight in a softmax).
inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-100.0f), x);  // NaN stays NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// row[0:n] = softmax(row[0:n]); a row that is all -inf becomes zeros (as autofuse's
// Softmax lowering), NaN propagates.
void SoftmaxRow(float* row, int64_t n) {
#if defined(__AVX512F__)
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(row + j));
  float m = _mm512_reduce_max_ps(vmax);
  for (; j < n; ++j) m = std::max(m, row[j]);
  if (std::isinf(m) && m < 0) m = 0.0f;
  const __m512 shift = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (j = 0; j < n; j += 16) {
    const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    const __m512 e = ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, row + j), shift));
    _mm512_mask_storeu_ps(row + j, mask, e);
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(mask, e));
  }
  float sum = _mm512_reduce_add_ps(vsum);
  const __m512 inverse = _mm512_set1_ps(sum == 0.0f ? 1.0f : 1.0f / sum);
  for (j = 0; j < n; j += 16) {
    const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(row + j, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, row + j), inverse));
  }
#else
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) m = row[j] > m || row[j] != row[j] ? row[j] : m;
  if (std::isinf(m) && m < 0) m = 0.0f;
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (row[j] = std::exp(row[j] - m));
  const float inverse = sum == 0.0f ? 1.0f : 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) row[j] *= inverse;
#endif
}

// Packs the (rows x cols) matrix at(r, c) = src[r * row_stride + c * col_stride] into the
// weight layout (blocks of kKC rows, 32-column panels, zero past cols): rows are copied
// when col_stride is 1, columns gathered 16 at a time otherwise (K^T from K).
void PackPanels(float* dst, const float* src, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  const int64_t panels = (cols + kNR - 1) / kNR;
  for (int64_t pc = 0; pc < rows; pc += kKC) {
    const int64_t kc = std::min(kKC, rows - pc);
    for (int64_t p = 0; p < panels; ++p) {
      float* panel = dst + pc * panels * kNR + p * kc * kNR;
      const int64_t width = std::min(kNR, cols - p * kNR);
      const float* first = src + pc * row_stride + p * kNR * col_stride;
      if (col_stride == 1) {
        for (int64_t r = 0; r < kc; ++r) {
          CopyRun(panel + r * kNR, first + r * row_stride, width);
          CopyRun(panel + r * kNR + width, nullptr, kNR - width);
        }
        continue;
      }
#if defined(__AVX512F__)
      if (col_stride * (kNR - 1) < INT32_MAX) {
        const __m512i step = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                _mm512_set1_epi32(static_cast<int32_t>(col_stride)));
        const __m512i step16 = _mm512_add_epi32(step, _mm512_set1_epi32(static_cast<int32_t>(16 * col_stride)));
        const __mmask16 m0 = width >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << width) - 1);
        const __mmask16 m1 = width >= 32 ? __mmask16(0xFFFF) : width <= 16 ? __mmask16(0) : __mmask16((1u << (width - 16)) - 1);
        for (int64_t r = 0; r < kc; ++r) {
          const float* base = first + r * row_stride;
          _mm512_storeu_ps(panel + r * kNR, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, step, base, 4));
          _mm512_storeu_ps(panel + r * kNR + 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, step16, base, 4));
        }
        continue;
      }
#endif
      for (int64_t r = 0; r < kc; ++r) {
        for (int64_t c = 0; c < kNR; ++c) {
          panel[r * kNR + c] = c < width ? first[r * row_stride + c * col_stride] : 0.0f;
        }
      }
    }
  }
}

// dst[0:n] = scale * src[0:n].
inline void ScaledRun(float* dst, const float* src, int64_t n, float scale) {
#if defined(__AVX512F__)
  const __m512 factor = _mm512_set1_ps(scale);
  for (; n > 0; n -= 16, dst += 16, src += 16) {
    const __mmask16 mask = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(dst, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, src), factor));
  }
#else
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * scale;
#endif
}

float* Aligned(std::vector<float>& buffer, size_t size) {
  if (buffer.size() < size + 16) buffer.resize(size + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) & ~uintptr_t(63));
}

struct AttentionProblem {
  const float *q, *k, *v, *bias;  // bias: [Bb, Hb, Sq, Skv] or nullptr
  float* out;
  int64_t b, sq, skv, h, d, dv;
  int64_t bias_batch_stride, bias_head_stride;  // 0 where the bias is broadcast
  float scale;
  int64_t q_row, k_row, v_row;  // floats from one sequence position to the next (H * D unless q, k, v interleave)

  // C[rows, cols] (ldc) = A[rows, kdim] (packed by `pack`, block by block) @ Bp + residual.
  template <typename PackA>
  static void Product(const PackA& pack, float* ap, const float* bp, int64_t kdim, int64_t rows, int64_t cols,
                      float* c, int64_t ldc, const float* zeros, const float* residual) {
    const int64_t panels = (cols + kNR - 1) / kNR;
    for (int64_t pc = 0; pc < kdim || pc == 0; pc += kKC) {
      const int64_t kc = std::min(kKC, kdim - pc);
      const bool first = pc == 0, last = pc + kKC >= kdim;
      pack(ap, pc, kc);
      for (int64_t p = 0; p < panels; ++p) {
        Tile(ap, bp + pc * panels * kNR + p * kc * kNR, kc, c + p * kNR, ldc, rows, std::min(kNR, cols - p * kNR),
             first, last, zeros, residual ? residual + p * kNR : nullptr, -INFINITY, INFINITY);
      }
      if (kdim == 0) break;
    }
  }

  // Every query row of head `unit % h` of batch `unit / h` (part.m0 is the unit).
  void Run(const Part& part) const {
    const int64_t unit = part.m0;
    thread_local std::vector<float> kt_buffer, v_buffer, score_buffer, a_buffer, zero_buffer;
    const int64_t bi = unit / h, hi = unit % h;
    const int64_t kv_panels = (skv + kNR - 1) / kNR, out_panels = (dv + kNR - 1) / kNR;
    float* kt = Aligned(kt_buffer, d * kv_panels * kNR);
    float* vp = Aligned(v_buffer, skv * out_panels * kNR);
    float* scores = Aligned(score_buffer, kMR * skv);
    float* ap = Aligned(a_buffer, kMR * kKC);
    float* zeros = Aligned(zero_buffer, std::max(kv_panels, out_panels) * kNR);
    std::fill(zeros, zeros + std::max(kv_panels, out_panels) * kNR, 0.0f);
    const int64_t out_row = h * dv;
    PackPanels(kt, k + bi * skv * k_row + hi * d, d, skv, 1, k_row);     // K^T: [d][j]
    PackPanels(vp, v + bi * skv * v_row + hi * dv, skv, dv, v_row, 1);  // V: [j][e]
    const float* head_bias = bias ? bias + bi * bias_batch_stride + hi * bias_head_stride : nullptr;
    for (int64_t r0 = 0; r0 < sq; r0 += kMR) {
      const int64_t rows = std::min(kMR, sq - r0);
      const float* q0 = q + (bi * sq + r0) * q_row + hi * d;
      auto pack_q = [&](float* dst, int64_t k0, int64_t kc) {
        for (int64_t r = 0; r < kMR; ++r) {
          if (r < rows) {
            ScaledRun(dst + r * kKC, q0 + r * q_row + k0, kc, scale);
          } else {
            CopyRun(dst + r * kKC, nullptr, kc);
          }
        }
      };
      Product(pack_q, ap, kt, d, rows, skv, scores, skv, zeros, head_bias ? head_bias + r0 * skv : nullptr);
      for (int64_t r = 0; r < rows; ++r) SoftmaxRow(scores + r * skv, skv);
      auto pack_p = [&](float* dst, int64_t k0, int64_t kc) {
        for (int64_t r = 0; r < kMR; ++r) CopyRun(dst + r * kKC, r < rows ? scores + r * skv + k0 : nullptr, kc);
      };
      Product(pack_p, ap, vp, skv, rows, dv, out + (bi * sq + r0) * out_row + hi * dv, out_row, zeros, nullptr);
    }
  }
};

// One (batch, head) per part, handed out by the GEMM's Work.
Part Piece(const AttentionProblem&, bool, int64_t index, int64_t) { return {index, index + 1, 0, 0}; }

// Checks the bias against the problem, then runs it, one (batch, head) per part.
ffi::Error RunAttention(ffi::ThreadPool& pool, AttentionProblem problem, std::optional<ffi::Buffer<ffi::F32>>& bias) {
  if (bias.has_value()) {
    const auto bd = bias->dimensions();
    if (bd.size() != 4 || (bd[0] != 1 && bd[0] != problem.b) || (bd[1] != 1 && bd[1] != problem.h) ||
        bd[2] != problem.sq || bd[3] != problem.skv) {
      return ffi::Error::InvalidArgument("AutofuseAttention: the bias must be [1 or B, 1 or H, Sq, Skv]");
    }
    problem.bias = bias->typed_data();
    problem.bias_head_stride = bd[1] == 1 ? 0 : problem.sq * problem.skv;
    problem.bias_batch_stride = bd[0] == 1 ? 0 : bd[1] * problem.sq * problem.skv;
  }
  RunParts(pool, problem, problem.b * problem.h);
  return ffi::Error::Success();
}

ffi::Error AttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                         ffi::Buffer<ffi::F32> v, std::optional<ffi::Buffer<ffi::F32>> bias,
                         ffi::ResultBuffer<ffi::F32> out, float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), od = out->dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || od.size() != 4) {
    return ffi::Error::InvalidArgument("AutofuseAttention: q, k, v and the output must be [B, S, H, D]");
  }
  const int64_t b = qd[0], sq = qd[1], h = qd[2], d = qd[3], skv = kd[1], dv = vd[3];
  if (kd[0] != b || kd[2] != h || kd[3] != d || vd[0] != b || vd[1] != skv || vd[2] != h || od[0] != b ||
      od[1] != sq || od[2] != h || od[3] != dv) {
    return ffi::Error::InvalidArgument("AutofuseAttention: q, k, v and the output disagree on B, S, H or D");
  }
  return RunAttention(pool, {q.typed_data(), k.typed_data(), v.typed_data(), nullptr, out->typed_data(), b, sq, skv, h,
                             d, dv, 0, 0, scale, h * d, h * d, h * dv}, bias);
}

// q, k and v interleaved in one [B, S, 3, H, D] buffer: a fused q/k/v projection's output, read in place.
ffi::Error AttentionQKVImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv, std::optional<ffi::Buffer<ffi::F32>> bias,
                            ffi::ResultBuffer<ffi::F32> out, float scale) {
  const auto xd = qkv.dimensions(), od = out->dimensions();
  if (xd.size() != 5 || xd[2] != 3 || od.size() != 4 || od[0] != xd[0] || od[1] != xd[1] || od[2] != xd[3] ||
      od[3] != xd[4]) {
    return ffi::Error::InvalidArgument("AutofuseAttentionQKV: qkv must be [B, S, 3, H, D] and the output [B, S, H, D]");
  }
  const int64_t b = xd[0], s = xd[1], h = xd[3], d = xd[4];
  const float* base = qkv.typed_data();
  return RunAttention(pool, {base, base + h * d, base + 2 * h * d, nullptr, out->typed_data(), b, s, s, h, d, d, 0,
                             0, scale, 3 * h * d, 3 * h * d, 3 * h * d}, bias);
}

// ------------------------------------------------------------------ max pooling
//
// NHWC max pooling, vectorised over channels: taps outside the image are skipped (as
// -inf padding would be), so the padded input is never written. NaN propagates.

struct MaxPoolProblem {
  const float* x;
  float* y;
  int64_t b, h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;

  // Output rows [part.m0, part.m1) of the B * OH rows.
  void Run(const Part& part) const {
    for (int64_t row = part.m0; row < part.m1; ++row) {
      const int64_t bi = row / oh, oy = row % oh;
      for (int64_t ox = 0; ox < ow; ++ox) {
        float* out = y + (row * ow + ox) * c;
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
          const int64_t lanes = std::min<int64_t>(16, c - c0);
#if defined(__AVX512F__)
          const __mmask16 mask = lanes >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << lanes) - 1);
          __m512 acc = _mm512_set1_ps(-INFINITY);
#else
          float acc[16];
          std::fill(acc, acc + 16, -INFINITY);
#endif
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t iy = oy * sh - ph + i * dh;
            if (iy < 0 || iy >= h) continue;
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t ix = ox * sw - pw + j * dw;
              if (ix < 0 || ix >= w) continue;
              const float* in = x + ((bi * h + iy) * w + ix) * c + c0;
#if defined(__AVX512F__)
              const __m512 v = _mm512_maskz_loadu_ps(mask, in);
              acc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_max_ps(v, acc), v);
#else
              for (int64_t l = 0; l < lanes; ++l) acc[l] = in[l] != in[l] || in[l] > acc[l] ? in[l] : acc[l];
#endif
            }
          }
#if defined(__AVX512F__)
          _mm512_mask_storeu_ps(out + c0, mask, acc);
#else
          std::copy(acc, acc + lanes, out + c0);
#endif
        }
      }
    }
  }
};

// Output rows split evenly, a part per thread.
Part Piece(const MaxPoolProblem& p, bool, int64_t index, int64_t parts) {
  const int64_t rows = p.b * p.oh;
  return {rows * index / parts, rows * (index + 1) / parts, 0, 0};
}

ffi::Error MaxPoolImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t kh,
                       int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3]) {
    return ffi::Error::InvalidArgument("AutofuseMaxPoolNHWC: x must be [B, H, W, C] and y [B, OH, OW, C]");
  }
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0) {
    return ffi::Error::InvalidArgument("AutofuseMaxPoolNHWC: bad window attributes");
  }
  MaxPoolProblem problem{x.typed_data(), y->typed_data(), xd[0], xd[1], xd[2], xd[3], yd[1], yd[2],
                         kh, kw, sh, sw, ph, pw, dh, dw};
  const int64_t rows = problem.b * problem.oh;
  const bool small = y->element_count() * kh * kw < kMinParallelMacs;
  RunParts(pool, problem, small ? 1 : std::min<int64_t>({static_cast<int64_t>(pool.num_threads()), MaxThreads(), rows}));
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ layer normalization
//
// y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis, row by row (rows
// stay in L1: mean, then the variance about it, then the output), rows split over threads.

struct LayerNormProblem {
  const float *x, *scale, *bias;  // bias may be null
  float* y;
  int64_t m, n;
  float eps;

  void Run(const Part& part) const {
    for (int64_t row = part.m0; row < part.m1; ++row) {
      const float* in = x + row * n;
      float* out = y + row * n;
#if defined(__AVX512F__)
      __m512 acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, in + j));
      }
      const float mean = _mm512_reduce_add_ps(acc) / static_cast<float>(n);
      const __m512 center = _mm512_set1_ps(mean);
      acc = _mm512_setzero_ps();
      for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
        const __m512 d = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, in + j), center);
        acc = _mm512_fmadd_ps(d, d, acc);
      }
      const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(n) + eps));
      for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 mask = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
        const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, in + j), center), inv);
        const __m512 shift = bias ? _mm512_maskz_loadu_ps(mask, bias + j) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(out + j, mask, _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(mask, scale + j), shift));
      }
#else
      float mean = 0.0f, var = 0.0f;
      for (int64_t j = 0; j < n; ++j) mean += in[j];
      mean /= static_cast<float>(n);
      for (int64_t j = 0; j < n; ++j) var += (in[j] - mean) * (in[j] - mean);
      const float inv = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
      for (int64_t j = 0; j < n; ++j) out[j] = (in[j] - mean) * inv * scale[j] + (bias ? bias[j] : 0.0f);
#endif
    }
  }
};

Part Piece(const LayerNormProblem& p, bool, int64_t index, int64_t parts) {
  return {p.m * index / parts, p.m * (index + 1) / parts, 0, 0};
}

constexpr int64_t kMinParallelElements = 1 << 15;

ffi::Error LayerNormImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                         std::optional<ffi::Buffer<ffi::F32>> bias, ffi::ResultBuffer<ffi::F32> y, float eps) {
  const auto xd = x.dimensions();
  if (xd.size() != 2 || y->element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("AutofuseLayerNorm: x must be [M, N] and y shaped like it");
  }
  const int64_t m = xd[0], n = xd[1];
  if (scale.element_count() != static_cast<size_t>(n) ||
      (bias.has_value() && bias->element_count() != static_cast<size_t>(n))) {
    return ffi::Error::InvalidArgument("AutofuseLayerNorm: scale and bias must hold N elements");
  }
  LayerNormProblem problem{x.typed_data(), scale.typed_data(), bias.has_value() ? bias->typed_data() : nullptr,
                           y->typed_data(), m, n, eps};
  const bool small = m * n < kMinParallelElements;
  RunParts(pool, problem, small ? 1 : std::min<int64_t>({static_cast<int64_t>(pool.num_threads()), MaxThreads(), m}));
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ Winograd F(2x2, 3x3)
//
// A stride-1, undilated 3x3 NHWC convolution as 16 products over 2x2 output tiles
// (Lavin & Gray 2016): V = B^T d B of every 4x4 input tile (per channel), M_xi = V_xi @ U_xi
// for the 16 positions xi of the transformed tile, Y = A^T M A, with the bias, residual
// and clamp applied as the 2x2 outputs are stored. 2.25x fewer multiplies than the direct
// form; the transforms are additions only. U_xi = (G g G^T)_xi is computed and packed
// once, when the model is rewritten (autofuse/gemm.py, pack_winograd):
//
//   AutofuseWinogradNHWC  x f32 [B, H, W, C], u f32 [16 * C * P * 32], bias f32 [N],
//                         residual? f32 [B, OH, OW, N] -> y f32 [B, OH, OW, N]
//                         attributes ph, pw (top/left padding), lo, hi

constexpr int64_t kWinogradChunkFloats = 1 << 17;  // a chunk's transformed tiles, in and out: 512 KB of L2
constexpr int64_t kWinogradChunks = 4;  // chunks needed to take the chunked form
constexpr int64_t kWinogradStagedFloats = 1 << 21;  // 8 MB: beyond it, staging every tile leaves L3

struct WinogradProblem {
  const float* x;
  const float* u;
  Epilogue epilogue;
  float* y;
  float* v;      // stages 0-2: scratch [16][tiles][c]
  float* m;      // stages 0-2: scratch [16][tiles][n]
  const float* zeros;  // [n]
  int64_t b, h, w, c, oh, ow, n, ph, pw, th, tw, tiles;
  int stage;  // 0: input transform, 1: the products (one xi per part), 2: output transform,
              // 3: all three for a chunk of `chunk` tiles per part, in the thread's own scratch
  int64_t chunk;

  void Run(const Part& part) const {
    if (stage == 1) {
      Products(part.m0, v, m, tiles, tiles);
    } else if (stage == 3) {
      const int64_t count = part.m1 - part.m0;
      thread_local std::vector<float> v_local, m_local;
      float* lv = Aligned(v_local, 16 * chunk * c);
      float* lm = Aligned(m_local, 16 * chunk * n);
      for (int64_t t = part.m0; t < part.m1; ++t) Input(t, lv, count, t - part.m0);
      for (int64_t xi = 0; xi < 16; ++xi) Products(xi, lv, lm, count, count);
      for (int64_t t = part.m0; t < part.m1; ++t) Output(t, lm, count, t - part.m0);
    } else {
      for (int64_t t = part.m0; t < part.m1; ++t) {
        if (stage == 0) {
          Input(t, v, tiles, t);
        } else {
          Output(t, m, tiles, t);
        }
      }
    }
  }

  // M_xi[0:rows] = V_xi[0:rows] @ U_xi, V and M holding `stride` tiles per xi.
  void Products(int64_t xi, const float* vv, float* mm, int64_t rows, int64_t stride) const {
    Problem<MatrixRows>{{vv + xi * stride * c, c}, u + xi * c * ((n + kNR - 1) / kNR) * kNR,
                        {zeros, nullptr, -INFINITY, INFINITY}, mm + xi * stride * n, rows, c, n}
        .Run({0, rows, 0, n});
  }

#if defined(__AVX512F__)
  // V[:, slot, :] = B^T d B of tile t's 4x4 input window (zeros outside the image).
  void Input(int64_t t, float* vv, int64_t stride, int64_t slot) const {
    const int64_t bi = t / (th * tw), y0 = (t / tw) % th * 2 - ph, x0 = t % tw * 2 - pw;
    for (int64_t c0 = 0; c0 < c; c0 += 16) {
      const __mmask16 mask = c - c0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (c - c0)) - 1);
      __m512 d[4][4];
      for (int i = 0; i < 4; ++i) {
        const int64_t iy = y0 + i;
        for (int j = 0; j < 4; ++j) {
          const int64_t ix = x0 + j;
          d[i][j] = iy >= 0 && iy < h && ix >= 0 && ix < w
                        ? _mm512_maskz_loadu_ps(mask, x + ((bi * h + iy) * w + ix) * c + c0)
                        : _mm512_setzero_ps();
        }
      }
      __m512 r[4][4];  // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
      for (int j = 0; j < 4; ++j) {
        r[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        r[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        r[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        r[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
      }
      for (int i = 0; i < 4; ++i) {  // (B^T d) B: the same on columns
        const __m512 out[4] = {_mm512_sub_ps(r[i][0], r[i][2]), _mm512_add_ps(r[i][1], r[i][2]),
                               _mm512_sub_ps(r[i][2], r[i][1]), _mm512_sub_ps(r[i][1], r[i][3])};
        for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(vv + ((i * 4 + j) * stride + slot) * c + c0, mask, out[j]);
      }
    }
  }

  // The 2x2 outputs of tile t = A^T M A of M[:, slot, :], then the bias, the residual and the clamp.
  void Output(int64_t t, const float* mm, int64_t stride, int64_t slot) const {
    const int64_t bi = t / (th * tw), oy = (t / tw) % th * 2, ox = t % tw * 2;
    const __m512 low = _mm512_set1_ps(epilogue.lo), high = _mm512_set1_ps(epilogue.hi);
    const bool clamp_lo = epilogue.lo > -INFINITY, clamp_hi = epilogue.hi < INFINITY;
    for (int64_t n0 = 0; n0 < n; n0 += 16) {
      const __mmask16 mask = n - n0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - n0)) - 1);
      __m512 s[2][4];  // A^T M: rows m0 + m1 + m2, m1 - m2 - m3
      for (int j = 0; j < 4; ++j) {
        const __m512 m0 = _mm512_maskz_loadu_ps(mask, mm + ((0 * 4 + j) * stride + slot) * n + n0);
        const __m512 m1 = _mm512_maskz_loadu_ps(mask, mm + ((1 * 4 + j) * stride + slot) * n + n0);
        const __m512 m2 = _mm512_maskz_loadu_ps(mask, mm + ((2 * 4 + j) * stride + slot) * n + n0);
        const __m512 m3 = _mm512_maskz_loadu_ps(mask, mm + ((3 * 4 + j) * stride + slot) * n + n0);
        s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
      }
      const __m512 bias = _mm512_maskz_loadu_ps(mask, epilogue.bias + n0);
      for (int i = 0; i < 2; ++i) {
        if (oy + i >= oh) break;
        const __m512 out[2] = {_mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]),
                               _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3])};
        for (int j = 0; j < 2; ++j) {
          if (ox + j >= ow) break;
          const int64_t at = ((bi * oh + oy + i) * ow + ox + j) * n + n0;
          __m512 yv = _mm512_add_ps(out[j], bias);
          if (epilogue.residual) yv = _mm512_add_ps(yv, _mm512_maskz_loadu_ps(mask, epilogue.residual + at));
          if (clamp_lo) yv = _mm512_max_ps(low, yv);  // NaN stays NaN, as in the GEMM's epilogue
          if (clamp_hi) yv = _mm512_min_ps(high, yv);
          _mm512_mask_storeu_ps(y + at, mask, yv);
        }
      }
    }
  }
#else
  void Input(int64_t t, float* vv, int64_t stride, int64_t slot) const {
    const int64_t bi = t / (th * tw), y0 = (t / tw) % th * 2 - ph, x0 = t % tw * 2 - pw;
    for (int64_t ch = 0; ch < c; ++ch) {
      float d[4][4], r[4][4];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          const int64_t iy = y0 + i, ix = x0 + j;
          d[i][j] = iy >= 0 && iy < h && ix >= 0 && ix < w ? x[((bi * h + iy) * w + ix) * c + ch] : 0.0f;
        }
      }
      for (int j = 0; j < 4; ++j) {
        r[0][j] = d[0][j] - d[2][j], r[1][j] = d[1][j] + d[2][j];
        r[2][j] = d[2][j] - d[1][j], r[3][j] = d[1][j] - d[3][j];
      }
      for (int i = 0; i < 4; ++i) {
        const float out[4] = {r[i][0] - r[i][2], r[i][1] + r[i][2], r[i][2] - r[i][1], r[i][1] - r[i][3]};
        for (int j = 0; j < 4; ++j) vv[((i * 4 + j) * stride + slot) * c + ch] = out[j];
      }
    }
  }

  void Output(int64_t t, const float* mm, int64_t stride, int64_t slot) const {
    const int64_t bi = t / (th * tw), oy = (t / tw) % th * 2, ox = t % tw * 2;
    for (int64_t k = 0; k < n; ++k) {
      float s[2][4];
      for (int j = 0; j < 4; ++j) {
        const float* at = mm + (j * stride + slot) * n + k;
        const float m0 = at[0], m1 = at[4 * stride * n], m2 = at[8 * stride * n], m3 = at[12 * stride * n];
        s[0][j] = m0 + m1 + m2, s[1][j] = m1 - m2 - m3;
      }
      for (int i = 0; i < 2 && oy + i < oh; ++i) {
        const float out[2] = {s[i][0] + s[i][1] + s[i][2], s[i][1] - s[i][2] - s[i][3]};
        for (int j = 0; j < 2 && ox + j < ow; ++j) {
          const int64_t at = ((bi * oh + oy + i) * ow + ox + j) * n + k;
          float yv = out[j] + epilogue.bias[k] + (epilogue.residual ? epilogue.residual[at] : 0.0f);
          if (!(yv >= epilogue.lo)) yv = yv != yv ? yv : epilogue.lo;
          if (!(yv <= epilogue.hi)) yv = yv != yv ? yv : epilogue.hi;
          y[at] = yv;
        }
      }
    }
  }
#endif
};

// Stage 1: one of the 16 products per part; stage 3: a chunk of tiles; stages 0 and 2: tiles split evenly.
Part Piece(const WinogradProblem& p, bool, int64_t index, int64_t parts) {
  if (p.stage == 1) return {index, index + 1, 0, 0};
  if (p.stage == 3) return {index * p.chunk, std::min(p.tiles, (index + 1) * p.chunk), 0, 0};
  return {p.tiles * index / parts, p.tiles * (index + 1) / parts, 0, 0};
}

ffi::Error WinogradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> u,
                        ffi::Buffer<ffi::F32> bias, std::optional<ffi::Buffer<ffi::F32>> residual,
                        ffi::ResultBuffer<ffi::F32> y, int64_t ph, int64_t pw, float lo, float hi) {
  const auto xd = x.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0]) {
    return ffi::Error::InvalidArgument("AutofuseWinogradNHWC: x must be [B, H, W, C] and y [B, OH, OW, N]");
  }
  const int64_t c = xd[3], n = yd[3], oh = yd[1], ow = yd[2];
  if (ph < 0 || pw < 0) return ffi::Error::InvalidArgument("AutofuseWinogradNHWC: negative padding");
  if (u.element_count() != static_cast<size_t>(16 * c * ((n + kNR - 1) / kNR) * kNR) ||
      bias.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("AutofuseWinogradNHWC: u must hold 16 packed [C, N] kernels, the bias N");
  }
  if (residual.has_value() && residual->element_count() != y->element_count()) {
    return ffi::Error::InvalidArgument("AutofuseWinogradNHWC: the residual must be shaped like y");
  }
  const int64_t th = (oh + 1) / 2, tw = (ow + 1) / 2, tiles = xd[0] * th * tw;
  thread_local std::vector<float> zero_buffer;
  float* zeros = Aligned(zero_buffer, n);
  std::fill(zeros, zeros + n, 0.0f);
  WinogradProblem problem{x.typed_data(), u.typed_data(),
                          {bias.typed_data(), residual.has_value() ? residual->typed_data() : nullptr, lo, hi},
                          y->typed_data(), nullptr, nullptr, zeros, xd[0], xd[1], xd[2], c, oh, ow, n, ph, pw, th, tw,
                          tiles, 0, 0};
  const int64_t threads = std::min<int64_t>(pool.num_threads(), MaxThreads());
  // Chunks of tiles whose transformed tiles (in and out) stay in L2, each transformed,
  // multiplied and transformed back by one thread, when the transformed kernel that every
  // chunk reads again fits beside them or when the whole transformed input would not stay
  // in L3; otherwise the three stages over all tiles, each read once (measured, session 5).
  problem.chunk = std::max<int64_t>(kMR, kWinogradChunkFloats / (16 * (c + n)) / kMR * kMR);
  const bool chunked = tiles >= kWinogradChunks * problem.chunk &&
                       (16 * c * n <= kWinogradChunkFloats || 16 * tiles * (c + n) > kWinogradStagedFloats);
  if (chunked) {
    problem.stage = 3;
    RunParts(pool, problem, (tiles + problem.chunk - 1) / problem.chunk);
    return ffi::Error::Success();
  }
  // Scratch of the calling thread (a concurrent call runs on another thread).
  thread_local std::vector<float> v_buffer, m_buffer;
  problem.v = Aligned(v_buffer, 16 * tiles * c);
  problem.m = Aligned(m_buffer, 16 * tiles * n);
  const int64_t spread = tiles * std::max(c, n) >= 4096 ? std::max<int64_t>(1, threads) : 1;
  RunParts(pool, problem, std::min(spread, tiles));
  problem.stage = 1;
  RunParts(pool, problem, 16);
  problem.stage = 2;
  RunParts(pool, problem, std::min(spread, tiles));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("lo")
                                  .Attr<float>("hi"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseConvNHWC, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw")
                                  .Attr<float>("lo")
                                  .Attr<float>("hi"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseAttention, AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseMaxPoolNHWC, MaxPoolImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseAttentionQKV, AttentionQKVImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseLayerNorm, LayerNormImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseWinogradNHWC, WinogradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<float>("lo")
                                  .Attr<float>("hi"));
