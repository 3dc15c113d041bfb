// C = A @ B (+ bias) (then ReLU) through OpenBLAS's sgemm, as an XLA FFI custom call (CPU).
//
//   a    f32 [M, K]   row-major
//   b    f32 [K, N]   row-major (the constant weight)
//   bias f32 [N]      optional, broadcast over the rows
//   c    f32 [M, N]
//   attribute: relu (bool); split (bool: cut the product into parts run on XLA's
//              intra-op threads, each part one sgemm)
//
// The sgemm is not linked: Python resolves it in the OpenBLAS that numpy loaded
// (its name carries a build-specific prefix/suffix, and 64-bit integer builds
// take int64 sizes) and hands the address to AutofuseBlasBind once, before the
// first call, saying whether OpenBLAS was set to one thread. Only then are
// products split: OpenBLAS's own thread pool beside XLA's oversubscribes the
// cores. The bias is written into C first and sgemm adds to it (beta = 1).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm of an LP64 (int32 sizes) and of an ILP64 (int64 sizes) OpenBLAS.
using Sgemm32 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t, const float*,
                         int32_t, float, float*, int32_t);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                         int64_t, float, float*, int64_t);

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
// Below this many multiply-adds, splitting over XLA's threads costs more than it saves.
constexpr int64_t kMinParallelMacs = 1 << 18;
constexpr int64_t kPartsPerThread = 4;
constexpr int64_t kMinPartRows = 64;
constexpr int64_t kMinPartColumns = 64;

struct Blas {
  void* sgemm = nullptr;
  bool ilp64 = false;
  bool single_threaded = false;
};

Blas g_blas;

// One part of the product: rows [m0, m1) and columns [n0, n1) of C, bias and ReLU included.
struct Part {
  int64_t m0, m1, n0, n1;
};

struct Problem {
  const float* a;
  const float* b;
  const float* bias;  // nullptr: none
  float* c;
  int64_t m, k, n;
  bool relu;

  void Run(const Part& part) const {
    const int64_t rows = part.m1 - part.m0, cols = part.n1 - part.n0;
    if (rows <= 0 || cols <= 0) return;
    float* out = c + part.m0 * n + part.n0;
    if (bias != nullptr) {
      for (int64_t i = 0; i < rows; ++i) std::copy(bias + part.n0, bias + part.n1, out + i * n);
    }
    const float* a0 = a + part.m0 * k;
    const float* b0 = b + part.n0;
    const float beta = bias != nullptr ? 1.0f : 0.0f;
    const int64_t lda = std::max<int64_t>(k, 1), ldc = std::max<int64_t>(n, 1);
    if (g_blas.ilp64) {
      reinterpret_cast<Sgemm64>(g_blas.sgemm)(kRowMajor, kNoTrans, kNoTrans, rows, cols, k, 1.0f, a0, lda, b0, ldc,
                                               beta, out, ldc);
    } else {
      reinterpret_cast<Sgemm32>(g_blas.sgemm)(kRowMajor, kNoTrans, kNoTrans, int32_t(rows), int32_t(cols),
                                               int32_t(k), 1.0f, a0, int32_t(lda), b0, int32_t(ldc), beta, out,
                                               int32_t(ldc));
    }
    if (relu) {
      for (int64_t i = 0; i < rows; ++i) {
        float* row = out + i * n;
        for (int64_t j = 0; j < cols; ++j) row[j] = std::max(row[j], 0.0f);
      }
    }
  }
};

// Part `index` of `parts`: the longer of M and N cut into equal pieces (columns in multiples of 16).
Part Piece(const Problem& p, int64_t index, int64_t parts) {
  if (p.m >= p.n) return {p.m * index / parts, p.m * (index + 1) / parts, 0, p.n};
  const int64_t blocks = (p.n + 15) / 16;
  return {0, p.m, std::min(p.n, 16 * (blocks * index / parts)), std::min(p.n, 16 * (blocks * (index + 1) / parts))};
}

// How many parts: a few per thread, so that a thread the OS takes away (the
// cores are shared) delays one small part instead of half the product, but
// none thinner than kMinPartRows rows or kMinPartColumns columns.
int64_t PartCount(const Problem& p, int64_t workers) {
  const int64_t most = p.m >= p.n ? p.m / kMinPartRows : p.n / kMinPartColumns;
  return std::max<int64_t>(1, std::min(kPartsPerThread * workers, most));
}

// Parts handed out from an atomic counter; the caller takes parts too, so the
// result is complete even if no pool thread ever runs.
struct Work {
  Problem p;
  int64_t parts;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    for (int64_t i = next.fetch_add(1); i < parts; i = next.fetch_add(1)) {
      p.Run(Piece(p, i, parts));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error BlasMatMulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                          std::optional<ffi::Buffer<ffi::F32>> bias, ffi::ResultBuffer<ffi::F32> c, bool relu,
                          bool split) {
  if (g_blas.sgemm == nullptr) {
    return ffi::Error(ffi::ErrorCode::kFailedPrecondition, "BlasMatMul: OpenBLAS sgemm was never bound");
  }
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2) {
    return ffi::Error::InvalidArgument("BlasMatMul: a, b and c must be 2-D");
  }
  const int64_t m = ad[0], k = ad[1], n = bd[1];
  if (bd[0] != k || cd[0] != m || cd[1] != n) {
    return ffi::Error::InvalidArgument("BlasMatMul: shapes do not agree (a [M, K], b [K, N], c [M, N])");
  }
  if (bias.has_value() && bias->element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("BlasMatMul: bias must hold N elements");
  }
  if (!g_blas.ilp64 && std::max({m, n, k}) > INT32_MAX) {
    return ffi::Error::InvalidArgument("BlasMatMul: a dimension exceeds this OpenBLAS's 32-bit sizes");
  }
  const Problem problem{a.typed_data(), b.typed_data(), bias.has_value() ? bias->typed_data() : nullptr,
                        c->typed_data(), m, k, n, relu};
  const int64_t workers = split && g_blas.single_threaded ? pool.num_threads() : 0;
  const int64_t parts = workers > 1 && m * n * k >= kMinParallelMacs ? PartCount(problem, workers) : 1;
  if (parts <= 1) {
    problem.Run({0, m, 0, n});
    return ffi::Error::Success();
  }
  auto work = std::make_shared<Work>();
  work->p = problem;
  work->parts = parts;
  for (int64_t t = 1; t < std::min(workers, parts); ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

extern "C" int AutofuseBlasBind(void* sgemm, int ilp64, int single_threaded) {
  g_blas.sgemm = sgemm;
  g_blas.ilp64 = ilp64 != 0;
  g_blas.single_threaded = single_threaded != 0;
  return sgemm != nullptr ? 0 : 1;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AutofuseBlasMatMul, BlasMatMulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .OptionalArg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("relu")
                                  .Attr<bool>("split"));
