// Balanced-sparse matrix product as an XLA FFI custom call (CPU).
//
//   y[M, N] = x[M, K] @ W,  W (K x N) stored as tiles of 16 output columns:
//     values  f32 [NB][KW][S][16]   the S kept weights of each window, per column
//     indices u8  [NB][KW][S][16]   their offsets inside the window (< window)
//   NB = ceil(N / 16), KW = K / window, S = kept weights per window and column.
//
// Every column keeps exactly S weights in every window (balanced sparsity), so
// a tile row (w, j) is one 16-lane vector of values and one of offsets. With a
// 16- or 32-wide window the window of x sits in one or two registers and the
// gather is a register permute (vpermps / vpermt2ps); other windows use a
// memory gather. Work is split over XLA's intra-op thread pool by column tiles.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;
// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinParallelMacs = 1 << 17;

struct Problem {
  const float* x;
  const float* values;
  const uint8_t* indices;
  float* y;
  int64_t m, k, n, window, kept;  // kept = S
  int64_t tile_elems() const { return (k / window) * kept * kLanes; }
};

#if defined(__AVX512F__)

template <int WIN>
inline __m512 Pick(__m512i offsets, const __m512* xw, const float* xrow, int64_t base) {
  if constexpr (WIN == 16) {
    return _mm512_permutexvar_ps(offsets, xw[0]);
  } else if constexpr (WIN == 32) {
    return _mm512_permutex2var_ps(xw[0], offsets, xw[1]);
  } else {
    return _mm512_i32gather_ps(_mm512_add_epi32(offsets, _mm512_set1_epi32((int)base)), xrow, 4);
  }
}

// One tile of 16 columns times MB rows of x: accumulators stay in registers.
template <int MB, int WIN>
inline void TileRows(const Problem& p, int64_t tile, int64_t row0) {
  constexpr int kRegs = WIN == 32 ? 2 : (WIN == 16 ? 1 : 0);
  const int64_t windows = p.k / p.window;
  const float* vals = p.values + tile * p.tile_elems();
  const uint8_t* offs = p.indices + tile * p.tile_elems();
  const float* xrows = p.x + row0 * p.k;
  __m512 acc[MB];
  for (int r = 0; r < MB; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t w = 0; w < windows; ++w) {
    __m512 xw[MB][kRegs > 0 ? kRegs : 1];
    if constexpr (kRegs > 0) {
      for (int r = 0; r < MB; ++r)
        for (int q = 0; q < kRegs; ++q) xw[r][q] = _mm512_loadu_ps(xrows + r * p.k + w * WIN + q * kLanes);
    }
    for (int64_t j = 0; j < p.kept; ++j) {
      const int64_t at = (w * p.kept + j) * kLanes;
      const __m512 v = _mm512_loadu_ps(vals + at);
      const __m512i o = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(offs + at)));
      for (int r = 0; r < MB; ++r)
        acc[r] = _mm512_fmadd_ps(v, Pick<WIN>(o, xw[r], xrows + r * p.k, w * p.window), acc[r]);
    }
  }
  const int64_t col0 = tile * kLanes;
  const __mmask16 mask = p.n - col0 >= kLanes ? (__mmask16)0xFFFF : (__mmask16)((1u << (p.n - col0)) - 1);
  for (int r = 0; r < MB; ++r) _mm512_mask_storeu_ps(p.y + (row0 + r) * p.n + col0, mask, acc[r]);
}

template <int WIN>
void Tiles(const Problem& p, int64_t first, int64_t last) {
  constexpr int MB = WIN == 32 ? 8 : 12;
  for (int64_t tile = first; tile < last; ++tile) {
    int64_t row = 0;
    for (; row + MB <= p.m; row += MB) TileRows<MB, WIN>(p, tile, row);
    for (; row + 4 <= p.m; row += 4) TileRows<4, WIN>(p, tile, row);
    for (; row < p.m; ++row) TileRows<1, WIN>(p, tile, row);
  }
}

void RunTiles(const Problem& p, int64_t first, int64_t last) {
  if (p.window == 16) Tiles<16>(p, first, last);
  else if (p.window == 32) Tiles<32>(p, first, last);
  else Tiles<0>(p, first, last);
}

#else  // portable path: the same tiles, plain loops the compiler may vectorise

void RunTiles(const Problem& p, int64_t first, int64_t last) {
  const int64_t windows = p.k / p.window;
  for (int64_t tile = first; tile < last; ++tile) {
    const float* vals = p.values + tile * p.tile_elems();
    const uint8_t* offs = p.indices + tile * p.tile_elems();
    const int64_t col0 = tile * kLanes;
    const int64_t cols = std::min(kLanes, p.n - col0);
    for (int64_t row = 0; row < p.m; ++row) {
      const float* xrow = p.x + row * p.k;
      float acc[kLanes] = {0};
      for (int64_t w = 0; w < windows; ++w)
        for (int64_t j = 0; j < p.kept; ++j) {
          const int64_t at = (w * p.kept + j) * kLanes;
          for (int64_t l = 0; l < kLanes; ++l) acc[l] += vals[at + l] * xrow[w * p.window + offs[at + l]];
        }
      std::memcpy(p.y + row * p.n + col0, acc, cols * sizeof(float));
    }
  }
}

#endif

// Chunks of column tiles handed out from an atomic counter. The caller takes
// chunks too, so the result is complete even if no pool thread ever runs.
struct Work {
  Problem p;
  int64_t tiles, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      RunTiles(p, c * tiles / chunks, (c + 1) * tiles / chunks);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error SparseMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> values,
                            ffi::Buffer<ffi::U8> indices, ffi::ResultBuffer<ffi::F32> y, int64_t window) {
  const auto xd = x.dimensions();
  const auto vd = values.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2 || vd.size() != 4 || yd.size() != 2 || vd[3] != kLanes)
    return ffi::Error::InvalidArgument("autofuse_sparse_matmul: x (M, K), values (NB, KW, S, 16), y (M, N) expected");
  if (indices.dimensions().size() != 4 || indices.element_count() != values.element_count())
    return ffi::Error::InvalidArgument("autofuse_sparse_matmul: indices must have the shape of values");
  if (window <= 0 || window > 256 || xd[1] != vd[1] * window || yd[0] != xd[0] || (yd[1] + kLanes - 1) / kLanes != vd[0])
    return ffi::Error::InvalidArgument("autofuse_sparse_matmul: shapes do not agree with the window");
  auto work = std::make_shared<Work>();
  work->p = Problem{x.typed_data(), values.typed_data(), indices.typed_data(), y->typed_data(),
                    xd[0], xd[1], yd[1], window, vd[2]};
  work->tiles = vd[0];
  const int64_t macs = xd[0] * values.element_count();
  const int64_t threads = macs < kMinParallelMacs ? 1 : std::max<int64_t>(1, pool.num_threads());
  work->chunks = std::min<int64_t>(work->tiles, threads == 1 ? 1 : 4 * threads);
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseSparseMatmul, SparseMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));
