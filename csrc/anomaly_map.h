// Per-pixel math of the fused anomaly-map op, shared by the CPU kernel
// (cpu/anomaly_map_cpu.cpp) and the CUDA kernels (cuda/anomaly_map_cuda.cu), so the
// CPU tests exercise the same arithmetic the GPU runs; and the one parameter struct
// both take. Plain C++ without ATen, so it compiles as device code.
//
// The op equals, in plain PyTorch (efficientad_fast/reference.py):
//   t_hat  = (teacher - mean) / std
//   d_st   = dist(t_hat, student[:, :C])        over channels
//   d_ae   = dist(autoencoder, student[:, C:])  over channels
//   m      = 0.1 * (d - q_a) / (q_b - q_a)       per map (skipped without quantiles)
//   map    = resize(pad(alpha * m_st + (1 - alpha) * m_ae))
// with dist = mean of squared differences ("l2") or 1 - cosine similarity.
// Bilinear resizing and the affine normalization commute, so the kernels
// normalize and fuse at feature resolution, give the padded border the value
// that a zero distance normalizes to, and resize once.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EAD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EAD_HOST_DEVICE inline
#endif

namespace efficientad_fast {

enum class Distance : int { L2 = 0, Cosine = 1 };

// torch.nn.functional.cosine_similarity's default eps: each norm is clamped to it.
constexpr float kCosineEps = 1e-8f;

// A teacher value standardized by its channel's statistics (both kernels, every layout).
EAD_HOST_DEVICE float standardize(float t, float mean, float stdev) { return (t - mean) / stdev; }

// Running per-pixel sums over channels for one pair of feature maps (a, b).
// Plain aggregates of floats only (usable in CUDA shared memory, shuffled field by field
// across a warp): value-initialize with {} to zero them. merge() adds another partial sum:
// the CPU kernel merges its lanes and channel blocks with it, the CUDA kernels their
// channel groups and warp lanes.
template <Distance D>
struct PairSums;

template <>
struct PairSums<Distance::L2> {
  float squared_diff;
  EAD_HOST_DEVICE void add(float a, float b) {
    const float d = a - b;
    squared_diff += d * d;
  }
  EAD_HOST_DEVICE void merge(const PairSums& o) { squared_diff += o.squared_diff; }
  // Mean of (a - b)^2 over the channels.
  EAD_HOST_DEVICE float finish(int64_t channels) const {
    return squared_diff / static_cast<float>(channels);
  }
};

template <>
struct PairSums<Distance::Cosine> {
  float dot, a_sq, b_sq;
  EAD_HOST_DEVICE void add(float a, float b) {
    dot += a * b;
    a_sq += a * a;
    b_sq += b * b;
  }
  EAD_HOST_DEVICE void merge(const PairSums& o) {
    dot += o.dot;
    a_sq += o.a_sq;
    b_sq += o.b_sq;
  }
  // 1 - cos(a, b), each norm clamped to eps as in F.cosine_similarity.
  EAD_HOST_DEVICE float finish(int64_t) const {
    const float na = fmaxf(sqrtf(a_sq), kCosineEps);
    const float nb = fmaxf(sqrtf(b_sq), kCosineEps);
    return 1.f - dot / (na * nb);
  }
};

// Map normalization and alpha-fusion: map = w_st * (d_st - qa_st) + w_ae * (d_ae - qa_ae)
// with w = weight * 0.1 / (q_b - q_a); without quantiles q_a = 0 and w = weight.
struct Fusion {
  float qa_st, w_st, qa_ae, w_ae;

  EAD_HOST_DEVICE static Fusion unnormalized(float alpha) {
    Fusion f;
    f.qa_st = 0.f;
    f.w_st = alpha;
    f.qa_ae = 0.f;
    f.w_ae = 1.f - alpha;
    return f;
  }
  // From quantiles held as float32 (a tensor's values, read where they are: on a GPU, by the
  // kernel). The four values arrive as scalars, not as a pointer: a pointer into a kernel's
  // by-value argument would make every thread copy that argument to local memory.
  EAD_HOST_DEVICE static Fusion from_quantiles(float qa_st, float qb_st, float qa_ae, float qb_ae,
                                               float alpha) {
    Fusion f;
    f.qa_st = qa_st;
    f.w_st = alpha * (0.1f / (qb_st - qa_st));
    f.qa_ae = qa_ae;
    f.w_ae = (1.f - alpha) * (0.1f / (qb_ae - qa_ae));
    return f;
  }
  EAD_HOST_DEVICE float operator()(float d_st, float d_ae) const {
    return w_st * (d_st - qa_st) + w_ae * (d_ae - qa_ae);
  }
  // The value of the zero-padded border after normalization and fusion.
  EAD_HOST_DEVICE float border() const { return (*this)(0.f, 0.f); }
};

// One output coordinate of a bilinear resize with align_corners=False,
// computed as ATen's upsample_bilinear2d does (float arithmetic).
struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

EAD_HOST_DEVICE LinearTap linear_tap(int64_t dst, int64_t in_size, float scale) {
  LinearTap tap;
  if (scale == 1.f) {  // same size: a copy, as ATen does (no NaN leaks from neighbours)
    tap.i0 = tap.i1 = dst;
    tap.w0 = 1.f;
    tap.w1 = 0.f;
    return tap;
  }
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  int64_t i0 = static_cast<int64_t>(floorf(src));
  if (i0 > in_size - 1) i0 = in_size - 1;
  float w1 = src - static_cast<float>(i0);
  w1 = fminf(fmaxf(w1, 0.f), 1.f);
  tap.i0 = i0;
  tap.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  tap.w1 = w1;
  tap.w0 = 1.f - w1;
  return tap;
}

// Bilinear sample of a row-major (rows x cols) map at one output pixel.
EAD_HOST_DEVICE float bilinear(const float* map, int64_t cols, const LinearTap& ty,
                               const LinearTap& tx) {
  const float* r0 = map + ty.i0 * cols;
  const float* r1 = map + ty.i1 * cols;
  return ty.w0 * (tx.w0 * r0[tx.i0] + tx.w1 * r0[tx.i1]) +
         ty.w1 * (tx.w0 * r1[tx.i0] + tx.w1 * r1[tx.i1]);
}

// Scale of a resize from in_size to out_size (ATen: input_size / output_size in float).
EAD_HOST_DEVICE float resize_scale(int64_t in_size, int64_t out_size) {
  return static_cast<float>(in_size) / static_cast<float>(out_size);
}

// Max that propagates NaN, like torch.amax.
EAD_HOST_DEVICE float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// Element strides of one (N, C, h, w) feature tensor as the kernels read it: any strides, so
// an input is read in place, not copied, whenever the kernel of the chosen layout can read it
// (anomaly_map.cpp, choose_layout). The stride of a dimension of size 1 is stored as 0 (its
// index is always 0), which keeps alignment decisions free of strides that are never used.
struct FeatureStrides {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

// Offset, in elements, of pixel (n, y, x)'s channel 0.
EAD_HOST_DEVICE int64_t pixel_offset(const FeatureStrides& s, int64_t n, int64_t y, int64_t x) {
  return n * s.n + y * s.h + x * s.w;
}

// The channels_last CUDA kernel reads kVectorBytes at a time (8 half/bfloat16, 4 float values)
// where vector_loads_fit; else one value at a time.
constexpr int64_t kVectorBytes = 16;

// Whether every pixel's channels of one feature tensor can be read as whole, aligned 16-byte
// vectors: its data pointer is 16-byte aligned, its channels are contiguous, and the channel
// count (so that the student's second half starts aligned too) and every other stride are
// multiples of the vector's length. Not so for an offset slice of a channels_last tensor
// (student[:, 1:]), an odd channel count, a pixel stride that is not a multiple of the vector
// (a channel slice of a wider tensor), or channels that are not contiguous; the kernel then
// takes the scalar path. Decided once per call on the host (both builds compute it, so the
// CPU tests see the decision the GPU would take).
EAD_HOST_DEVICE bool vector_loads_fit(uintptr_t address, const FeatureStrides& s, int64_t channels,
                                      int64_t element_size) {
  if (element_size <= 0 || kVectorBytes % element_size != 0) return false;
  const int64_t length = kVectorBytes / element_size;
  return address % kVectorBytes == 0 && s.c == 1 && channels % length == 0 && s.n % length == 0 &&
         s.h % length == 0 && s.w % length == 0;
}

// The checked arguments of one call as plain values: built once by the input checks
// (anomaly_map.cpp), read by the CPU kernel and passed by value to the CUDA kernels.
// The pointers point into float32 tensors the checks keep alive (AnomalyMapInputs).
struct AnomalyMapParams {
  const float* mean = nullptr;       // (C) teacher mean, or nullptr: teacher already standardized
  const float* stdev = nullptr;      // (C) teacher std, set together with mean
  // (4) q_a_st, q_b_st, q_a_ae, q_b_ae as a float32 tensor on the features' device (read by
  // the kernels, so a GPU tensor is never read back), or nullptr: host_fusion applies.
  const float* quantiles = nullptr;
  // The normalization and fusion weights computed on the host (in double, then rounded) when
  // the quantiles came as numbers (float[] in the schema) or not at all: held by value, so no
  // tensor is built or copied to the device per call (CUDA-graph capturable).
  Fusion host_fusion = Fusion::unnormalized(0.5f);
  float alpha = 0.5f;
  Distance distance = Distance::L2;
  // The kernel's thread mapping: channels_last (lanes along the channels) or NCHW (lanes
  // along a row). Either reads the strides below.
  bool channels_last = false;
  // The channels_last CUDA kernel reads 16-byte vectors (vector_loads_fit for all three).
  bool vector_loads = false;
  FeatureStrides teacher_strides, student_strides, autoencoder_strides;
  int64_t batch = 0, channels = 0, height = 0, width = 0, pad = 0;
  int64_t padded_height = 0, padded_width = 0, out_height = 0, out_width = 0;

  // The teacher value t of channel c, standardized when a mean and std were given.
  EAD_HOST_DEVICE float teacher_value(float t, int64_t c) const {
    return mean != nullptr ? standardize(t, mean[c], stdev[c]) : t;
  }
  EAD_HOST_DEVICE Fusion fusion() const {
    if (quantiles == nullptr) return host_fusion;
    return Fusion::from_quantiles(quantiles[0], quantiles[1], quantiles[2], quantiles[3], alpha);
  }
};

}  // namespace efficientad_fast
