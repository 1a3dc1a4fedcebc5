// CUDA kernels of efficientad_fast::anomaly_map and their registration. The per-pixel
// math is in anomaly_map.h (shared with the CPU kernel); the checks in anomaly_map.cpp.
//
// Three launches on the current stream, no host synchronisation:
//   1. fused feature map: both channel distances, normalization and alpha-fusion
//      for every pixel of the padded feature map (border pixels get the value a
//      zero distance normalizes to);
//   2. bilinear resize to the output size, one partial max per block;
//   3. per-image max of the partial maxima -> score.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "anomaly_map.h"
#include "anomaly_map_inputs.h"

namespace efficientad_fast {
namespace {

constexpr int kWarp = 32;

template <typename scalar_t>
__device__ __forceinline__ float load(const scalar_t* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Stage 1, NCHW. Block = 32 pixels (x) by kGroups channel groups (y): each warp reads 32
// consecutive pixels of one channel (coalesced); the groups are reduced in shared memory.
constexpr int kGroups = 8;

template <typename scalar_t, Distance D>
__global__ void fused_feature_map_nchw_kernel(const scalar_t* __restrict__ teacher,
                                              const scalar_t* __restrict__ student,
                                              const scalar_t* __restrict__ autoencoder,
                                              AnomalyMapParams a, float* __restrict__ padded) {
  __shared__ PairSums<D> st_part[kGroups][kWarp];
  __shared__ PairSums<D> ae_part[kGroups][kWarp];
  const int64_t plane_padded = a.padded_height * a.padded_width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const bool active = index < a.batch * plane_padded;
  int64_t n = 0, y = -1, x = -1;
  if (active) {
    n = index / plane_padded;
    const int64_t r = index % plane_padded;
    y = r / a.padded_width - a.pad;
    x = r % a.padded_width - a.pad;
  }
  const bool inside = active && y >= 0 && y < a.height && x >= 0 && x < a.width;
  PairSums<D> st{}, ae{};
  if (inside) {
    const int64_t C = a.channels, plane = a.height * a.width, q = y * a.width + x;
    const scalar_t* t = teacher + n * C * plane + q;
    const scalar_t* s_st = student + n * 2 * C * plane + q;
    const scalar_t* s_ae = s_st + C * plane;
    const scalar_t* ae_in = autoencoder + n * C * plane + q;
#pragma unroll 4
    for (int64_t c = threadIdx.y; c < C; c += kGroups) {
      st.add(a.teacher_value(load(t, c * plane), c), load(s_st, c * plane));
      ae.add(load(ae_in, c * plane), load(s_ae, c * plane));
    }
  }
  st_part[threadIdx.y][threadIdx.x] = st;
  ae_part[threadIdx.y][threadIdx.x] = ae;
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
  const Fusion fusion = a.fusion();
  if (!inside) {
    padded[index] = fusion.border();
    return;
  }
  for (int g = 1; g < kGroups; ++g) {
    st.merge(st_part[g][threadIdx.x]);
    ae.merge(ae_part[g][threadIdx.x]);
  }
  padded[index] = fusion(st.finish(a.channels), ae.finish(a.channels));
}

template <Distance D>
__device__ __forceinline__ void warp_merge(PairSums<D>& s);

template <>
__device__ __forceinline__ void warp_merge(PairSums<Distance::L2>& s) {
  for (int o = kWarp / 2; o > 0; o /= 2) s.squared_diff += __shfl_xor_sync(0xffffffffu, s.squared_diff, o);
}

template <>
__device__ __forceinline__ void warp_merge(PairSums<Distance::Cosine>& s) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    s.dot += __shfl_xor_sync(0xffffffffu, s.dot, o);
    s.a_sq += __shfl_xor_sync(0xffffffffu, s.a_sq, o);
    s.b_sq += __shfl_xor_sync(0xffffffffu, s.b_sq, o);
  }
}

// Stage 1, channels_last: one warp per padded pixel, lanes over the contiguous channels.
constexpr int kPixelsPerBlock = 8;

template <typename scalar_t, Distance D>
__global__ void fused_feature_map_nhwc_kernel(const scalar_t* __restrict__ teacher,
                                              const scalar_t* __restrict__ student,
                                              const scalar_t* __restrict__ autoencoder,
                                              AnomalyMapParams a, float* __restrict__ padded) {
  const int64_t plane_padded = a.padded_height * a.padded_width;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kPixelsPerBlock + threadIdx.y;
  if (index >= a.batch * plane_padded) return;  // whole warp leaves together
  const int64_t n = index / plane_padded, r = index % plane_padded;
  const int64_t y = r / a.padded_width - a.pad, x = r % a.padded_width - a.pad;
  const Fusion fusion = a.fusion();
  if (y < 0 || y >= a.height || x < 0 || x >= a.width) {
    if (threadIdx.x == 0) padded[index] = fusion.border();
    return;
  }
  const int64_t C = a.channels, pixel = (n * a.height + y) * a.width + x;
  const scalar_t* t = teacher + pixel * C;
  const scalar_t* s_st = student + pixel * 2 * C;
  const scalar_t* s_ae = s_st + C;
  const scalar_t* ae_in = autoencoder + pixel * C;
  PairSums<D> st{}, ae{};
#pragma unroll 4
  for (int64_t c = threadIdx.x; c < C; c += kWarp) {
    st.add(a.teacher_value(load(t, c), c), load(s_st, c));
    ae.add(load(ae_in, c), load(s_ae, c));
  }
  warp_merge(st);
  warp_merge(ae);
  if (threadIdx.x == 0) padded[index] = fusion(st.finish(C), ae.finish(C));
}

// Stage 2: bilinear resize; each block also writes the max of the pixels it wrote.
constexpr int kResizeThreads = 256;
constexpr int kMaxResizeBlocksPerImage = 128;

__device__ __forceinline__ float block_nan_max(float v, float* shared) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  v = lane < warps ? shared[lane] : -INFINITY;
  if (warp == 0) {
    for (int o = kWarp / 2; o > 0; o /= 2) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  }
  return v;
}

__global__ void resize_kernel(const float* __restrict__ padded, int64_t padded_height,
                              int64_t padded_width, float* __restrict__ out, int64_t out_height,
                              int64_t out_width, float* __restrict__ partial_max) {
  __shared__ float shared[kResizeThreads / kWarp];
  const int64_t n = blockIdx.y;
  const int64_t pixels = out_height * out_width;
  const float scale_y = resize_scale(padded_height, out_height);
  const float scale_x = resize_scale(padded_width, out_width);
  const float* map = padded + n * padded_height * padded_width;
  float* o = out + n * pixels;
  float m = -INFINITY;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t y = p / out_width, x = p % out_width;
    const float v = bilinear(map, padded_width, linear_tap(y, padded_height, scale_y),
                             linear_tap(x, padded_width, scale_x));
    o[p] = v;
    m = nan_max(m, v);
  }
  m = block_nan_max(m, shared);
  if (threadIdx.x == 0) partial_max[n * gridDim.x + blockIdx.x] = m;
}

// Stage 3: one block per image reduces that image's partial maxima.
__global__ void score_kernel(const float* __restrict__ partial_max, int64_t parts,
                             float* __restrict__ score) {
  __shared__ float shared[kMaxResizeBlocksPerImage / kWarp];
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < parts; i += blockDim.x)
    m = nan_max(m, partial_max[blockIdx.x * parts + i]);
  m = block_nan_max(m, shared);
  if (threadIdx.x == 0) score[blockIdx.x] = m;
}

void anomaly_map_cuda(const AnomalyMapInputs& in, at::Tensor& map, at::Tensor& score) {
  const AnomalyMapParams& p = in.params;
  TORCH_CHECK_VALUE(p.batch <= 65535, "anomaly_map: CUDA batch size must be <= 65535, got ",
                    p.batch);
  const c10::cuda::CUDAGuard guard(map.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor padded = at::empty({p.batch, p.padded_height, p.padded_width}, map.options());
  const int64_t padded_pixels = p.batch * p.padded_height * p.padded_width;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.teacher.scalar_type(),
                                  "anomaly_map_cuda", [&] {
    const scalar_t* t = in.teacher.data_ptr<scalar_t>();
    const scalar_t* s = in.student.data_ptr<scalar_t>();
    const scalar_t* ae = in.autoencoder.data_ptr<scalar_t>();
    float* buffer = padded.data_ptr<float>();
    if (p.channels_last) {
      const dim3 block(kWarp, kPixelsPerBlock);
      const dim3 grid((padded_pixels + kPixelsPerBlock - 1) / kPixelsPerBlock);
      if (p.distance == Distance::L2) {
        fused_feature_map_nhwc_kernel<scalar_t, Distance::L2><<<grid, block, 0, stream>>>(t, s, ae, p, buffer);
      } else {
        fused_feature_map_nhwc_kernel<scalar_t, Distance::Cosine><<<grid, block, 0, stream>>>(t, s, ae, p, buffer);
      }
    } else {
      const dim3 block(kWarp, kGroups);
      const dim3 grid((padded_pixels + kWarp - 1) / kWarp);
      if (p.distance == Distance::L2) {
        fused_feature_map_nchw_kernel<scalar_t, Distance::L2><<<grid, block, 0, stream>>>(t, s, ae, p, buffer);
      } else {
        fused_feature_map_nchw_kernel<scalar_t, Distance::Cosine><<<grid, block, 0, stream>>>(t, s, ae, p, buffer);
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  const int64_t out_pixels = p.out_height * p.out_width;
  const int64_t parts = std::min<int64_t>(
      (out_pixels + kResizeThreads - 1) / kResizeThreads, kMaxResizeBlocksPerImage);
  at::Tensor partial_max = at::empty({p.batch, parts}, map.options());
  resize_kernel<<<dim3(parts, p.batch), kResizeThreads, 0, stream>>>(
      padded.data_ptr<float>(), p.padded_height, p.padded_width, map.data_ptr<float>(),
      p.out_height, p.out_width, partial_max.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  score_kernel<<<p.batch, kMaxResizeBlocksPerImage, 0, stream>>>(partial_max.data_ptr<float>(),
                                                                  parts, score.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad_fast, CUDA, m) {
  m.impl("anomaly_map", &anomaly_map_entry<anomaly_map_cuda>);
}

}  // namespace efficientad_fast
