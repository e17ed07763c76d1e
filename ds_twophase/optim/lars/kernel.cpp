// Fused LARS / LARC step for a list of CPU tensors: one call per parameter group (and, for
// ZeRO-1/2, for fragments of one flat partition: lars_step_fragments, fragment_sum_squares).
//
// Built at first use by ds_twophase/optim/lars/kernel.py (torch.utils.cpp_extension.load); the update
// and its edge cases are documented there. For each tensor, in one pass each: the squared norms
// of p and g, then the trust ratio on the host, then d, the momentum buffer and p. A tensor
// whose norms and update run back to back is still in cache for the second pass, and one call
// for the whole list replaces several PyTorch dispatches per tensor (what dominates the step on
// many small tensors).
//
// Determinism: the squared norms are summed in fixed chunks of kChunk elements, each in a fixed
// order (SumShape), and the chunk sums are added in order, in double. Neither depends on the
// number of threads, and the compiler may not contract a * b + c into a fused multiply-add on
// its own (-ffp-contract=off, see kernel.py). So the result is the same for every thread count
// and run.
//
// Instruction sets: the loops are compiled twice, for the x86-64 baseline (SSE2) and for
// AVX2 + FMA, and the second runs where the CPU has them (no -march=native: the build cache may
// be shared by machines with different CPUs). Both compute the norms identically. The update
// rounds like PyTorch's CPU kernels on the same machine: x.add(y, alpha=a) is one fused
// multiply-add in PyTorch's AVX2 kernels (std::fma here) and a multiply and an add in its
// baseline kernels (and here, where std::fma would be a slow library call per element).
//
// Headers: only what the kernel needs (not torch/extension.h), which keeps the cold build short.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#ifndef DS_LARS_AVX2  // -DDS_LARS_AVX2=0 builds the baseline copy only (to compare the two)
#if defined(__x86_64__) && defined(__GNUC__)
#define DS_LARS_AVX2 1
#else
#define DS_LARS_AVX2 0
#endif
#endif

namespace {

// Elements per partial sum of a norm; also the unit of work of the parallel norm pass.
constexpr int64_t kChunk = 1 << 14;
// Tensors below this size are handled by the calling thread alone: starting a parallel region
// costs microseconds, and on a loaded machine it waits for a descheduled worker thread.
constexpr int64_t kParallelNumel = 1 << 18;
// Elements per task of the parallel update.
constexpr int64_t kUpdateGrain = 1 << 16;

// How chunk_sum_squares_body sums: kLanes independent accumulators (so that the compiler can
// vectorise without reassociating), each fed by runs of kRows squares summed in T first. For
// float, kRows = 8 keeps the float rounding of a run at the level of the float inputs' own
// (relative 1e-7), and the double additions and conversions once per 8 elements instead of
// per element, which is what the norm pass spends most of its time on otherwise.
template <typename T>
struct SumShape;
template <>
struct SumShape<float> {
  static constexpr int kLanes = 32;
  static constexpr int kRows = 8;
};
template <>
struct SumShape<double> {
  static constexpr int kLanes = 16;
  static constexpr int kRows = 1;
};

// Squared norms of p[0:n] and g[0:n], n <= kChunk, in double, in a fixed order.
template <typename T>
__attribute__((always_inline)) inline void chunk_sum_squares_body(const T* p, const T* g,
                                                                  int64_t n, double* sp,
                                                                  double* sg) {
  constexpr int kLanes = SumShape<T>::kLanes;
  constexpr int kRows = SumShape<T>::kRows;
  double ap[kLanes] = {};
  double ag[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes * kRows <= n; i += kLanes * kRows) {
    T rp[kLanes];
    T rg[kLanes];
    for (int j = 0; j < kLanes; ++j) {
      rp[j] = p[i + j] * p[i + j];
      rg[j] = g[i + j] * g[i + j];
    }
    for (int r = 1; r < kRows; ++r) {
      const T* pr = p + i + r * kLanes;
      const T* gr = g + i + r * kLanes;
      for (int j = 0; j < kLanes; ++j) {
        rp[j] += pr[j] * pr[j];
        rg[j] += gr[j] * gr[j];
      }
    }
    for (int j = 0; j < kLanes; ++j) {
      ap[j] += static_cast<double>(rp[j]);
      ag[j] += static_cast<double>(rg[j]);
    }
  }
  for (int j = 0; i < n; ++i, j = (j + 1) % kLanes) {
    const double x = static_cast<double>(p[i]);
    const double y = static_cast<double>(g[i]);
    ap[j] += x * x;
    ag[j] += y * y;
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) {
      ap[j] += ap[j + width];
      ag[j] += ag[j + width];
    }
  }
  *sp = ap[0];
  *sg = ag[0];
}

// The loop bodies are inlined into one copy per instruction set.
bool have_avx2() {
#if DS_LARS_AVX2
  // (this runs from a static initialiser, possibly before libgcc's own CPU detection)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}
const bool kHaveAvx2 = have_avx2();
// Whether the AVX2 copy runs: kHaveAvx2 unless the tests switched to the baseline copy.
std::atomic<bool> use_avx2{kHaveAvx2};

#if DS_LARS_AVX2

template <typename T>
__attribute__((target("avx2,fma"))) void chunk_sum_squares_avx2(const T* p, const T* g,
                                                                int64_t n, double* sp,
                                                                double* sg) {
  chunk_sum_squares_body(p, g, n, sp, sg);
}
#endif

template <typename T>
void chunk_sum_squares_base(const T* p, const T* g, int64_t n, double* sp, double* sg) {
  chunk_sum_squares_body(p, g, n, sp, sg);
}

template <typename T>
void chunk_sum_squares(const T* p, const T* g, int64_t n, double* sp, double* sg) {
#if DS_LARS_AVX2
  if (use_avx2.load(std::memory_order_relaxed)) {
    chunk_sum_squares_avx2(p, g, n, sp, sg);
    return;
  }
#endif
  chunk_sum_squares_base(p, g, n, sp, sg);
}

// Squared norms of two tensors of n elements: chunk sums (in parallel for large tensors),
// then added in chunk order.
template <typename T>
void sum_squares(const T* p, const T* g, int64_t n, double* sp, double* sg) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) {
    chunk_sum_squares(p, g, n, sp, sg);
    return;
  }
  std::vector<double> partial(2 * chunks);
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * kChunk;
      chunk_sum_squares(
          p + start, g + start, std::min(kChunk, n - start), &partial[2 * c],
          &partial[2 * c + 1]);
    }
  };
  if (n >= kParallelNumel) {
    at::parallel_for(0, chunks, 1, body);
  } else {
    body(0, chunks);
  }
  double tp = 0.0;
  double tg = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    tp += partial[2 * c];
    tg += partial[2 * c + 1];
  }
  *sp = tp;
  *sg = tg;
}

// a * x + y as PyTorch's y.add(x, alpha=a) rounds it (see the top of the file)
template <bool kFma, typename T>
__attribute__((always_inline)) inline T axpy(T a, T x, T y) {
  if constexpr (kFma) {
    return std::fma(a, x, y);
  } else {
    return a * x + y;
  }
}

// d = ratio * (g + wd * p); b = m * b + d; p -= lr * (nesterov ? d + m * b : b), in the
// tensors' own precision, op by op as timm's and torch.optim.SGD's (mul_, add_, add(alpha=)).
template <bool kFma, typename T, bool kDecay, bool kMomentum, bool kNesterov>
__attribute__((always_inline)) inline void update_body(T* p, const T* g, T* b, int64_t begin,
                                                       int64_t end, T ratio, T wd, T m, T lr) {
  const T neg_lr = -lr;
  for (int64_t i = begin; i < end; ++i) {
    T d = g[i];
    if constexpr (kDecay) {
      d = axpy<kFma>(wd, p[i], d);
    }
    d = d * ratio;
    if constexpr (kMomentum) {
      const T buf = b[i] * m + d;
      b[i] = buf;
      d = kNesterov ? axpy<kFma>(m, buf, d) : buf;
    }
    p[i] = axpy<kFma>(neg_lr, d, p[i]);
  }
}

#if DS_LARS_AVX2
template <typename T, bool kDecay, bool kMomentum, bool kNesterov>
__attribute__((target("avx2,fma"))) void update_avx2(T* p, const T* g, T* b, int64_t begin,
                                                     int64_t end, T ratio, T wd, T m, T lr) {
  update_body<true, T, kDecay, kMomentum, kNesterov>(p, g, b, begin, end, ratio, wd, m, lr);
}
#endif

template <typename T, bool kDecay, bool kMomentum, bool kNesterov>
void update_base(T* p, const T* g, T* b, int64_t begin, int64_t end, T ratio, T wd, T m, T lr) {
  update_body<false, T, kDecay, kMomentum, kNesterov>(p, g, b, begin, end, ratio, wd, m, lr);
}

template <typename T, bool kDecay, bool kMomentum, bool kNesterov>
void update_range(T* p, const T* g, T* b, int64_t begin, int64_t end, T ratio, T wd, T m, T lr) {
#if DS_LARS_AVX2
  if (use_avx2.load(std::memory_order_relaxed)) {
    update_avx2<T, kDecay, kMomentum, kNesterov>(p, g, b, begin, end, ratio, wd, m, lr);
    return;
  }
#endif
  update_base<T, kDecay, kMomentum, kNesterov>(p, g, b, begin, end, ratio, wd, m, lr);
}

template <typename T, bool kDecay, bool kMomentum, bool kNesterov>
void update(T* p, const T* g, T* b, int64_t n, T ratio, T wd, T m, T lr) {
  if (n >= kParallelNumel) {
    at::parallel_for(0, n, kUpdateGrain, [&](int64_t begin, int64_t end) {
      update_range<T, kDecay, kMomentum, kNesterov>(p, g, b, begin, end, ratio, wd, m, lr);
    });
  } else {
    update_range<T, kDecay, kMomentum, kNesterov>(p, g, b, 0, n, ratio, wd, m, lr);
  }
}

struct Options {
  double lr;
  double momentum;
  double weight_decay;
  double trust_coefficient;
  double eps;
  bool nesterov;
  bool clip;
  bool adapt;
};

// The trust ratio from the two norms (update.py's formula and edge cases).
double trust_ratio(double w_norm, double g_norm, const Options& o) {
  double ratio = 1.0;
  // 1 where either norm is 0 (or NaN, as torch.where(w > 0 & g > 0, ...) gives)
  if (w_norm > 0.0 && g_norm > 0.0) {
    ratio = o.trust_coefficient * w_norm / (g_norm + w_norm * o.weight_decay + o.eps);
  }
  if (o.clip) {
    // min(ratio / lr, 1) tends to 1 as lr -> 0, where 0 / 0 would give nan
    ratio = o.lr > 0.0 ? std::min(ratio / o.lr, 1.0) : 1.0;
  }
  return ratio;
}

// One tensor (or fragment) of n elements. With adapt, the trust ratio comes from the squared
// norms `sums` ([weight, gradient], summed elsewhere: over the ranks that share a parameter)
// or, when null, from the tensor's own.
template <typename T>
void step_span(T* p, const T* g, T* b, int64_t n, const Options& o,
               const double* sums = nullptr) {
  double ratio = 1.0;
  if (o.adapt) {
    double sp = 0.0;
    double sg = 0.0;
    if (sums != nullptr) {
      sp = sums[0];
      sg = sums[1];
    } else {
      sum_squares(p, g, n, &sp, &sg);
    }
    ratio = trust_ratio(std::sqrt(sp), std::sqrt(sg), o);
  }
  const T r = static_cast<T>(ratio);
  const T wd = static_cast<T>(o.weight_decay);
  const T m = static_cast<T>(o.momentum);
  const T lr = static_cast<T>(o.lr);
  const bool decay = o.weight_decay != 0.0;
  if (b == nullptr) {
    if (decay) {
      update<T, true, false, false>(p, g, b, n, r, wd, m, lr);
    } else {
      update<T, false, false, false>(p, g, b, n, r, wd, m, lr);
    }
  } else if (o.nesterov) {
    if (decay) {
      update<T, true, true, true>(p, g, b, n, r, wd, m, lr);
    } else {
      update<T, false, true, true>(p, g, b, n, r, wd, m, lr);
    }
  } else {
    if (decay) {
      update<T, true, true, false>(p, g, b, n, r, wd, m, lr);
    } else {
      update<T, false, true, false>(p, g, b, n, r, wd, m, lr);
    }
  }
}

template <typename T>
void step_tensor(const at::Tensor& param, const at::Tensor& grad, const at::Tensor* buf,
                 const Options& o) {
  step_span<T>(param.data_ptr<T>(), grad.const_data_ptr<T>(),
               buf != nullptr ? buf->data_ptr<T>() : nullptr, param.numel(), o);
}

// True when `t` is a plain CPU tensor of `like`'s dtype, sizes and strides.
bool matches(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() && t.layout() == at::kStrided && t.device().is_cpu() && t.has_storage() &&
         !t.is_neg() && !t._is_zerotensor() && !t.is_inference() &&
         t.scalar_type() == like.scalar_type() &&
         t.sizes() == like.sizes() && t.strides() == like.strides();
}

// Whether the kernel handles this tensor: float32/float64 CPU tensors whose elements fill one
// block of memory (contiguous, channels_last, ...) laid out alike in p, g and the buffer.
bool supported(const at::Tensor& p, const at::Tensor& g, const at::Tensor* b) {
  // (inference tensors: bumping their version raises, which must not happen half-way through
  // a group; the general path raises PyTorch's error before modifying anything)
  if (!p.defined() || p.layout() != at::kStrided || !p.device().is_cpu() || !p.has_storage() ||
      p.is_neg() || p._is_zerotensor() || p.is_inference()) {
    return false;
  }
  const auto dtype = p.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) {
    return false;
  }
  if (!p.is_non_overlapping_and_dense() || !matches(g, p)) {
    return false;
  }
  return b == nullptr || matches(*b, p);
}

// One LARS step for every tensor of a group; returns the indices of the tensors it did not
// handle (see `supported`), for the caller's general path. `bufs` is empty when momentum is 0.
std::vector<int64_t> lars_step(const std::vector<at::Tensor>& params,
                               const std::vector<at::Tensor>& grads,
                               const std::vector<at::Tensor>& bufs, double lr, double momentum,
                               double weight_decay, double trust_coefficient, double eps,
                               bool nesterov, bool clip, bool adapt) {
  TORCH_CHECK(grads.size() == params.size(), "lars_step: one gradient per parameter");
  TORCH_CHECK(bufs.empty() || bufs.size() == params.size(),
              "lars_step: one momentum buffer per parameter, or none");
  TORCH_CHECK(bufs.empty() == (momentum == 0.0),
              "lars_step: momentum buffers are needed exactly when momentum != 0");
  const Options o{lr, momentum, weight_decay, trust_coefficient, eps, nesterov, clip, adapt};
  std::vector<int64_t> skipped;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor* b = bufs.empty() ? nullptr : &bufs[i];
    if (!supported(p, grads[i], b)) {
      skipped.push_back(static_cast<int64_t>(i));
      continue;
    }
    if (p.scalar_type() == at::kFloat) {
      step_tensor<float>(p, grads[i], b, o);
    } else {
      step_tensor<double>(p, grads[i], b, o);
    }
    // as any in-place PyTorch op does, so that autograd notices the modification
    p.unsafeGetTensorImpl()->bump_version();
    if (b != nullptr) {
      b->unsafeGetTensorImpl()->bump_version();
    }
  }
  return skipped;
}

// Whether a ZeRO partition, its gradient and buffer (undefined when momentum is 0) can be
// stepped here, and its fragments (start, numel) lie inside it.
void check_partition(const at::Tensor& flat, const at::Tensor& grad, const at::Tensor& buf,
                     const std::vector<int64_t>& starts, const std::vector<int64_t>& numels) {
  TORCH_CHECK(flat.dim() == 1 && flat.is_contiguous() && supported(flat, grad, nullptr) &&
                  (!buf.defined() || matches(buf, flat)),
              "lars kernel: a partition must be a contiguous 1-D float32/float64 CPU tensor, "
              "with a gradient and buffer like it");
  TORCH_CHECK(starts.size() == numels.size(), "lars kernel: one start per fragment length");
  for (size_t k = 0; k < starts.size(); ++k) {
    TORCH_CHECK(starts[k] >= 0 && numels[k] >= 0 && starts[k] + numels[k] <= flat.numel(),
                "lars kernel: fragment outside the partition");
  }
}

// Squared norms of the fragments (start, numel) of a ZeRO partition and of its gradient:
// [w_0, g_0, w_1, g_1, ...], summed as the whole-tensor step sums them.
std::vector<double> fragment_sum_squares(const at::Tensor& flat, const at::Tensor& grad,
                                         const std::vector<int64_t>& starts,
                                         const std::vector<int64_t>& numels) {
  check_partition(flat, grad, at::Tensor(), starts, numels);
  std::vector<double> out(2 * starts.size());
  for (size_t k = 0; k < starts.size(); ++k) {
    if (flat.scalar_type() == at::kFloat) {
      sum_squares(flat.const_data_ptr<float>() + starts[k],
                  grad.const_data_ptr<float>() + starts[k], numels[k], &out[2 * k],
                  &out[2 * k + 1]);
    } else {
      sum_squares(flat.const_data_ptr<double>() + starts[k],
                  grad.const_data_ptr<double>() + starts[k], numels[k], &out[2 * k],
                  &out[2 * k + 1]);
    }
  }
  return out;
}

// One LARS step of the fragments (start, numel) of a ZeRO partition, each as the whole-tensor
// step takes a tensor; `sums`, when not empty, holds each fragment's parameter's squared
// weight and gradient norms ([w_0, g_0, w_1, g_1, ...], summed over the ranks that share it),
// from which its trust ratio is computed. `buf` is None when momentum is 0.
void lars_step_fragments(const at::Tensor& flat, const at::Tensor& grad,
                         const std::optional<at::Tensor>& buf_opt,
                         const std::vector<int64_t>& starts, const std::vector<int64_t>& numels,
                         const std::vector<double>& sums, double lr, double momentum,
                         double weight_decay, double trust_coefficient, double eps,
                         bool nesterov, bool clip, bool adapt) {
  const at::Tensor buf = buf_opt.has_value() ? *buf_opt : at::Tensor();
  check_partition(flat, grad, buf, starts, numels);
  TORCH_CHECK(buf.defined() == (momentum != 0.0),
              "lars_step_fragments: a momentum buffer is needed exactly when momentum != 0");
  TORCH_CHECK(sums.empty() || sums.size() == 2 * starts.size(),
              "lars_step_fragments: two squared norms per fragment, or none");
  const Options o{lr, momentum, weight_decay, trust_coefficient, eps, nesterov, clip, adapt};
  for (size_t k = 0; k < starts.size(); ++k) {
    const double* given = sums.empty() ? nullptr : &sums[2 * k];
    const int64_t s = starts[k];
    if (flat.scalar_type() == at::kFloat) {
      step_span<float>(flat.data_ptr<float>() + s, grad.const_data_ptr<float>() + s,
                       buf.defined() ? buf.data_ptr<float>() + s : nullptr, numels[k], o,
                       given);
    } else {
      step_span<double>(flat.data_ptr<double>() + s, grad.const_data_ptr<double>() + s,
                        buf.defined() ? buf.data_ptr<double>() + s : nullptr, numels[k], o,
                        given);
    }
  }
  flat.unsafeGetTensorImpl()->bump_version();
  if (buf.defined()) {
    buf.unsafeGetTensorImpl()->bump_version();
  }
}

// For the tests: run the AVX2 copy of the loops (where the CPU has it) or the baseline copy.
// Returns whether the AVX2 copy runs from now on.
bool set_avx2(bool enabled) {
  use_avx2.store(enabled && kHaveAvx2);
  return use_avx2.load();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "Fused LARS/LARC step for lists of CPU tensors (ds_twophase.optim.lars)";
  module.def("lars_step", &lars_step, "One LARS step for a list of tensors; returns skipped indices",
             pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("bufs"),
             pybind11::arg("lr"), pybind11::arg("momentum"), pybind11::arg("weight_decay"),
             pybind11::arg("trust_coefficient"), pybind11::arg("eps"), pybind11::arg("nesterov"),
             pybind11::arg("clip"), pybind11::arg("adapt"),
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("fragment_sum_squares", &fragment_sum_squares,
             "Squared norms of fragments of a ZeRO partition and its gradient",
             pybind11::arg("flat"), pybind11::arg("grad"), pybind11::arg("starts"),
             pybind11::arg("numels"), pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("lars_step_fragments", &lars_step_fragments,
             "One LARS step of fragments of a ZeRO partition", pybind11::arg("flat"),
             pybind11::arg("grad"), pybind11::arg("buf"), pybind11::arg("starts"),
             pybind11::arg("numels"), pybind11::arg("sums"), pybind11::arg("lr"),
             pybind11::arg("momentum"), pybind11::arg("weight_decay"),
             pybind11::arg("trust_coefficient"), pybind11::arg("eps"), pybind11::arg("nesterov"),
             pybind11::arg("clip"), pybind11::arg("adapt"),
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("_set_avx2", &set_avx2, "Tests: use the AVX2 (True) or baseline (False) loops",
             pybind11::arg("enabled"));
}
