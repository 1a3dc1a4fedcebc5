// CUDA kernels of efficientad_fast::anomaly_map and their registration. The per-pixel
// math is in anomaly_map.h (shared with the CPU kernel); the checks in anomaly_map.cpp.
//
// Three launches on the current stream, no host synchronisation:
//   1. fused feature map: both channel distances, normalization and alpha-fusion
//      for every pixel of the padded feature map (border pixels get the value a
//      zero distance normalizes to);
//   2. bilinear resize to the output size, one partial max per block;
//   3. per-image max of the partial maxima -> score.
// Blocks run along gridDim.x only, so any batch the CPU kernel takes works here too; a
// batch whose grid would pass CUDA's 2^31 - 1 blocks is launched in chunks of images
// (never for a batch that fits in memory, but the limit stays the same as on the CPU).
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
// consecutive pixels of one channel (coalesced: rows have stride 1, choose_layout copies
// inputs whose rows do not); the groups are reduced in shared memory.
// A warp covers 32 consecutive pixels of the padded grid, so it may straddle feature rows
// and include border pixels (~21 % of threads at 64x64 with pad 4). A row-aligned mapping
// may be faster, but that needs a GPU to measure (issue 25): the mapping stays until then.
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
    const int64_t C = a.channels;
    const int64_t tc = a.teacher_strides.c, sc = a.student_strides.c, ac = a.autoencoder_strides.c;
    const scalar_t* t = teacher + pixel_offset(a.teacher_strides, n, y, x);
    const scalar_t* s_st = student + pixel_offset(a.student_strides, n, y, x);
    const scalar_t* s_ae = s_st + C * sc;
    const scalar_t* ae_in = autoencoder + pixel_offset(a.autoencoder_strides, n, y, x);
#pragma unroll 4
    for (int64_t c = threadIdx.y; c < C; c += kGroups) {
      st.add(a.teacher_value(load(t, c * tc), c), load(s_st, c * sc));
      ae.add(load(ae_in, c * ac), load(s_ae, c * sc));
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

// Butterfly sum of a warp's partial sums: each step fetches the partner lane's sums field by
// field (PairSums holds floats only) and adds them with the shared PairSums::merge.
template <Distance D>
__device__ __forceinline__ void warp_merge(PairSums<D>& s) {
  constexpr int kFields = sizeof(PairSums<D>) / sizeof(float);
  static_assert(sizeof(PairSums<D>) == kFields * sizeof(float), "PairSums must hold floats only");
  for (int o = kWarp / 2; o > 0; o /= 2) {
    PairSums<D> other;
    const float* mine = reinterpret_cast<const float*>(&s);
    float* theirs = reinterpret_cast<float*>(&other);
#pragma unroll
    for (int f = 0; f < kFields; ++f) theirs[f] = __shfl_xor_sync(0xffffffffu, mine[f], o);
    s.merge(other);
  }
}

// Stage 1, channels_last: one warp per padded pixel, lanes over the contiguous channels
// (stride 1: choose_layout copies inputs whose channels are not).
constexpr int kPixelsPerBlock = 8;

// kVectorBytes / sizeof(scalar_t) values from one aligned 16-byte load (8 half or bfloat16,
// 4 float), converted to float. Only where vector_loads_fit said so (AnomalyMapParams).
template <typename scalar_t>
constexpr int kVectorLength = static_cast<int>(kVectorBytes / sizeof(scalar_t));

template <typename scalar_t>
__device__ __forceinline__ void load_vector(const scalar_t* p, float (&out)[kVectorLength<scalar_t>]) {
  static_assert(kVectorBytes == sizeof(uint4), "one uint4 per vector");
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const scalar_t* values = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
  for (int k = 0; k < kVectorLength<scalar_t>; ++k) out[k] = static_cast<float>(values[k]);
}

// One lane's share of a pixel's channels in vectors: lane l reads vectors l, l + 32, ...;
// the per-value math is the shared header's (teacher_value, PairSums::add).
template <typename scalar_t, Distance D>
__device__ __forceinline__ void add_vectors(const AnomalyMapParams& a, const scalar_t* t,
                                            const scalar_t* s_st, const scalar_t* s_ae,
                                            const scalar_t* ae_in, PairSums<D>& st,
                                            PairSums<D>& ae) {
  constexpr int V = kVectorLength<scalar_t>;
  for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * V; c0 < a.channels; c0 += kWarp * V) {
    float tv[V], sv[V], rv[V], av[V];
    load_vector(t + c0, tv);
    load_vector(s_st + c0, sv);
    load_vector(s_ae + c0, rv);
    load_vector(ae_in + c0, av);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      st.add(a.teacher_value(tv[k], c0 + k), sv[k]);
      ae.add(av[k], rv[k]);
    }
  }
}

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
  const int64_t C = a.channels;
  const scalar_t* t = teacher + pixel_offset(a.teacher_strides, n, y, x);
  const scalar_t* s_st = student + pixel_offset(a.student_strides, n, y, x);
  const scalar_t* s_ae = s_st + C;
  const scalar_t* ae_in = autoencoder + pixel_offset(a.autoencoder_strides, n, y, x);
  PairSums<D> st{}, ae{};
  if (a.vector_loads) {
    add_vectors(a, t, s_st, s_ae, ae_in, st, ae);
  } else {  // unaligned or partial vectors: one value per lane at a time
#pragma unroll 4
    for (int64_t c = threadIdx.x; c < C; c += kWarp) {
      st.add(a.teacher_value(load(t, c), c), load(s_st, c));
      ae.add(load(ae_in, c), load(s_ae, c));
    }
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

// Grid: `parts` blocks per image, the images one after another in gridDim.x (not gridDim.y,
// which stops at 65535: the CPU kernel takes any batch, so the CUDA one must too).
__global__ void resize_kernel(const float* __restrict__ padded, int64_t padded_height,
                              int64_t padded_width, float* __restrict__ out, int64_t out_height,
                              int64_t out_width, int64_t parts, float* __restrict__ partial_max) {
  __shared__ float shared[kResizeThreads / kWarp];
  const int64_t n = blockIdx.x / parts, part = blockIdx.x % parts;
  const int64_t pixels = out_height * out_width;
  const float scale_y = resize_scale(padded_height, out_height);
  const float scale_x = resize_scale(padded_width, out_width);
  const float* map = padded + n * padded_height * padded_width;
  float* o = out + n * pixels;
  float m = -INFINITY;
  for (int64_t p = part * blockDim.x + threadIdx.x; p < pixels; p += parts * blockDim.x) {
    const int64_t y = p / out_width, x = p % out_width;
    const float v = bilinear(map, padded_width, linear_tap(y, padded_height, scale_y),
                             linear_tap(x, padded_width, scale_x));
    o[p] = v;
    m = nan_max(m, v);
  }
  m = block_nan_max(m, shared);
  if (threadIdx.x == 0) partial_max[blockIdx.x] = m;
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

// The blocks of one launch along gridDim.x (CUDA's limit, 2^31 - 1).
constexpr int64_t kMaxBlocks = 2147483647;

int64_t blocks(int64_t items, int64_t per_block) { return (items + per_block - 1) / per_block; }

// Images per launch, so that no launch of `blocks_per_image(images)` blocks exceeds the grid
// limit. One chunk (the whole batch) for any batch that fits in memory; the loop only keeps
// the CPU's and the CUDA kernel's accepted inputs the same.
int64_t images_per_launch(int64_t batch, int64_t items_per_image, int64_t per_block) {
  return std::max<int64_t>(1, std::min(batch, kMaxBlocks * per_block / std::max<int64_t>(items_per_image, 1)));
}

template <typename scalar_t>
void launch_fused_feature_map(const AnomalyMapInputs& in, float* padded, cudaStream_t stream) {
  const AnomalyMapParams& p = in.params;
  const bool nhwc = p.channels_last;
  const int64_t per_block = nhwc ? kPixelsPerBlock : kWarp;
  const int64_t plane_padded = p.padded_height * p.padded_width;
  const int64_t chunk = images_per_launch(p.batch, plane_padded, per_block);
  const scalar_t* t = in.teacher.data_ptr<scalar_t>();
  const scalar_t* s = in.student.data_ptr<scalar_t>();
  const scalar_t* ae = in.autoencoder.data_ptr<scalar_t>();
  for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
    AnomalyMapParams a = p;
    a.batch = std::min(chunk, p.batch - n0);
    const dim3 grid(blocks(a.batch * plane_padded, per_block));
    const scalar_t* t_n = t + n0 * p.teacher_strides.n;
    const scalar_t* s_n = s + n0 * p.student_strides.n;
    const scalar_t* ae_n = ae + n0 * p.autoencoder_strides.n;
    float* out = padded + n0 * plane_padded;
    if (nhwc) {
      const dim3 block(kWarp, kPixelsPerBlock);
      if (p.distance == Distance::L2) {
        fused_feature_map_nhwc_kernel<scalar_t, Distance::L2><<<grid, block, 0, stream>>>(t_n, s_n, ae_n, a, out);
      } else {
        fused_feature_map_nhwc_kernel<scalar_t, Distance::Cosine><<<grid, block, 0, stream>>>(t_n, s_n, ae_n, a, out);
      }
    } else {
      const dim3 block(kWarp, kGroups);
      if (p.distance == Distance::L2) {
        fused_feature_map_nchw_kernel<scalar_t, Distance::L2><<<grid, block, 0, stream>>>(t_n, s_n, ae_n, a, out);
      } else {
        fused_feature_map_nchw_kernel<scalar_t, Distance::Cosine><<<grid, block, 0, stream>>>(t_n, s_n, ae_n, a, out);
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void anomaly_map_cuda(const AnomalyMapInputs& in, at::Tensor& map, at::Tensor& score) {
  const AnomalyMapParams& p = in.params;
  const c10::cuda::CUDAGuard guard(map.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor padded = at::empty({p.batch, p.padded_height, p.padded_width}, map.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.teacher.scalar_type(),
                                  "anomaly_map_cuda", [&] {
    launch_fused_feature_map<scalar_t>(in, padded.data_ptr<float>(), stream);
  });

  const int64_t plane_padded = p.padded_height * p.padded_width;
  const int64_t out_pixels = p.out_height * p.out_width;
  const int64_t parts = std::min<int64_t>(blocks(out_pixels, kResizeThreads), kMaxResizeBlocksPerImage);
  at::Tensor partial_max = at::empty({p.batch, parts}, map.options());
  const int64_t chunk = images_per_launch(p.batch, parts, 1);
  for (int64_t n0 = 0; n0 < p.batch; n0 += chunk) {
    const int64_t images = std::min(chunk, p.batch - n0);
    float* partial = partial_max.data_ptr<float>() + n0 * parts;
    resize_kernel<<<images * parts, kResizeThreads, 0, stream>>>(
        padded.data_ptr<float>() + n0 * plane_padded, p.padded_height, p.padded_width,
        map.data_ptr<float>() + n0 * out_pixels, p.out_height, p.out_width, parts, partial);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    score_kernel<<<images, kMaxResizeBlocksPerImage, 0, stream>>>(partial, parts,
                                                                  score.data_ptr<float>() + n0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad_fast, CUDA, m) {
  m.impl("anomaly_map", &anomaly_map_entry<anomaly_map_cuda>);
}

}  // namespace efficientad_fast
