// CPU kernel of efficientad_fast::anomaly_map and its registration. The per-pixel math
// is in anomaly_map.h (shared with the CUDA kernels); the checks in anomaly_map.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "anomaly_map.h"
#include "anomaly_map_inputs.h"

namespace efficientad_fast {

namespace {

// n values as float. Half needs F16C/AVX-512 intrinsics to convert 8/16 at a time (the
// compiler does not vectorize c10::Half's scalar conversion); bfloat16 converts by a shift,
// which it does vectorize.
template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <>
inline void to_float<at::Half>(const at::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// A float view of n contiguous feature values: float data is used in place, half and
// bfloat16 are converted into a buffer, so the arithmetic loops only ever see float.
template <typename scalar_t>
struct FloatRow {
  std::vector<float> buffer;
  const float* operator()(const scalar_t* src, int64_t n) {
    if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
    to_float(src, buffer.data(), n);
    return buffer.data();
  }
};

template <>
struct FloatRow<float> {
  const float* operator()(const float* src, int64_t) { return src; }
};

// Stage 1, NCHW: one task per feature row (n, y); channels outer, pixels inner so
// the inner loops run over contiguous memory and vectorize.
template <typename scalar_t, Distance D>
void fused_feature_map_nchw(const AnomalyMapInputs& in, const Fusion& fusion, float* padded) {
  const AnomalyMapParams& p = in.params;
  const int64_t C = p.channels, h = p.height, w = p.width;
  // Rows are contiguous (stride 1 along w, or w == 1): choose_layout copies any input whose
  // rows are not; every other stride is read as given.
  const FeatureStrides &ts = p.teacher_strides, &ss = p.student_strides, &as = p.autoencoder_strides;
  const scalar_t* teacher = in.teacher.data_ptr<scalar_t>();
  const scalar_t* student = in.student.data_ptr<scalar_t>();
  const scalar_t* autoencoder = in.autoencoder.data_ptr<scalar_t>();
  const float *mean = p.mean, *stdev = p.stdev;

  at::parallel_for(0, p.batch * h, 1, [&](int64_t begin, int64_t end) {
    // Channel sums in two levels (blocks of kBlock channels, then the blocks) keep the
    // rounding error near that of ATen's cascade sum instead of growing with C.
    constexpr int64_t kBlock = 16;
    std::vector<PairSums<D>> st(w), ae(w), st_total(w), ae_total(w);
    FloatRow<scalar_t> t_row, s_st_row, s_ae_row, a_row;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      std::fill(st_total.begin(), st_total.end(), PairSums<D>{});
      std::fill(ae_total.begin(), ae_total.end(), PairSums<D>{});
      PairSums<D>* __restrict__ st_sums = st.data();
      PairSums<D>* __restrict__ ae_sums = ae.data();
      for (int64_t c = 0; c < C; ++c) {
        if (c % kBlock == 0) {
          if (c > 0) {
            for (int64_t x = 0; x < w; ++x) st_total[x].merge(st_sums[x]);
            for (int64_t x = 0; x < w; ++x) ae_total[x].merge(ae_sums[x]);
          }
          std::fill(st.begin(), st.end(), PairSums<D>{});
          std::fill(ae.begin(), ae.end(), PairSums<D>{});
        }
        const float* __restrict__ t = t_row(teacher + pixel_offset(ts, n, y, 0) + c * ts.c, w);
        const float* __restrict__ s_st = s_st_row(student + pixel_offset(ss, n, y, 0) + c * ss.c, w);
        const float* __restrict__ s_ae = s_ae_row(student + pixel_offset(ss, n, y, 0) + (C + c) * ss.c, w);
        const float* __restrict__ a = a_row(autoencoder + pixel_offset(as, n, y, 0) + c * as.c, w);
        if (mean != nullptr) {
          const float m = mean[c], sd = stdev[c];
          for (int64_t x = 0; x < w; ++x) st_sums[x].add(standardize(t[x], m, sd), s_st[x]);
        } else {
          for (int64_t x = 0; x < w; ++x) st_sums[x].add(t[x], s_st[x]);
        }
        for (int64_t x = 0; x < w; ++x) ae_sums[x].add(a[x], s_ae[x]);
      }
      for (int64_t x = 0; x < w; ++x) st_total[x].merge(st_sums[x]);
      for (int64_t x = 0; x < w; ++x) ae_total[x].merge(ae_sums[x]);
      float* out = padded + (n * p.padded_height + y + p.pad) * p.padded_width + p.pad;
      for (int64_t x = 0; x < w; ++x) out[x] = fusion(st_total[x].finish(C), ae_total[x].finish(C));
    }
  });
}

// Stage 1, channels_last: channels are contiguous per pixel; kLanes independent
// partial sums per pixel let the channel loop vectorize without reassociation.
template <typename scalar_t, Distance D>
void fused_feature_map_nhwc(const AnomalyMapInputs& in, const Fusion& fusion, float* padded) {
  constexpr int64_t kLanes = 16;
  const AnomalyMapParams& p = in.params;
  const int64_t C = p.channels, h = p.height, w = p.width;
  // Each pixel's channels are contiguous (stride 1 along C, or C == 1; the student's 2C
  // too): choose_layout copies any input whose channels are not; every other stride is read
  // as given (a channel slice of a wider channels_last tensor is read in place).
  const FeatureStrides &ts = p.teacher_strides, &ss = p.student_strides, &as = p.autoencoder_strides;
  const scalar_t* teacher = in.teacher.data_ptr<scalar_t>();
  const scalar_t* student = in.student.data_ptr<scalar_t>();
  const scalar_t* autoencoder = in.autoencoder.data_ptr<scalar_t>();
  const float *mean = p.mean, *stdev = p.stdev;

  at::parallel_for(0, p.batch * h, 1, [&](int64_t begin, int64_t end) {
    FloatRow<scalar_t> t_row, s_row, a_row;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      float* out = padded + (n * p.padded_height + y + p.pad) * p.padded_width + p.pad;
      for (int64_t x = 0; x < w; ++x) {
        const float* __restrict__ t = t_row(teacher + pixel_offset(ts, n, y, x), C);
        const float* __restrict__ s_st = s_row(student + pixel_offset(ss, n, y, x), 2 * C);
        const float* __restrict__ s_ae = s_st + C;
        const float* __restrict__ a = a_row(autoencoder + pixel_offset(as, n, y, x), C);
        PairSums<D> st[kLanes] = {}, ae[kLanes] = {};
        int64_t c = 0;
        for (; c + kLanes <= C; c += kLanes) {
          if (mean != nullptr) {
            for (int64_t k = 0; k < kLanes; ++k)
              st[k].add(standardize(t[c + k], mean[c + k], stdev[c + k]), s_st[c + k]);
          } else {
            for (int64_t k = 0; k < kLanes; ++k) st[k].add(t[c + k], s_st[c + k]);
          }
          for (int64_t k = 0; k < kLanes; ++k) ae[k].add(a[c + k], s_ae[c + k]);
        }
        for (; c < C; ++c) {
          st[0].add(p.teacher_value(t[c], c), s_st[c]);
          ae[0].add(a[c], s_ae[c]);
        }
        for (int64_t k = 1; k < kLanes; ++k) {
          st[0].merge(st[k]);
          ae[0].merge(ae[k]);
        }
        out[x] = fusion(st[0].finish(C), ae[0].finish(C));
      }
    }
  });
}

std::vector<LinearTap> linear_taps(int64_t in_size, int64_t out_size) {
  std::vector<LinearTap> taps(out_size);
  const float scale = resize_scale(in_size, out_size);
  for (int64_t i = 0; i < out_size; ++i) taps[i] = linear_tap(i, in_size, scale);
  return taps;
}

// Stage 2: bilinear resize of the padded map to the output size, with the
// per-image max fused in (one partial max per output row, then per image).
void resize_and_score(const AnomalyMapParams& p, const float* padded, float* out, float* score) {
  const int64_t H = p.out_height, W = p.out_width;
  const int64_t Hp = p.padded_height, Wp = p.padded_width;
  const std::vector<LinearTap> taps_y = linear_taps(Hp, H), taps_x = linear_taps(Wp, W);
  std::vector<float> row_max(p.batch * H);
  at::parallel_for(0, p.batch * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, y = row % H;
      const float* map = padded + n * Hp * Wp;
      float* o = out + row * W;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t x = 0; x < W; ++x) {
        o[x] = bilinear(map, Wp, taps_y[y], taps_x[x]);
        m = nan_max(m, o[x]);
      }
      row_max[row] = m;
    }
  });
  for (int64_t n = 0; n < p.batch; ++n) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t y = 0; y < H; ++y) m = nan_max(m, row_max[n * H + y]);
    score[n] = m;
  }
}

// Stage 1 (fused feature map into the padded buffer), then stage 2 (resize and score).
void anomaly_map_cpu(const AnomalyMapInputs& in, at::Tensor& map, at::Tensor& score) {
  const AnomalyMapParams& p = in.params;
  const Fusion fusion = p.fusion();
  at::Tensor padded = at::full({p.batch, p.padded_height, p.padded_width}, fusion.border(),
                               map.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.teacher.scalar_type(),
                                  "anomaly_map_cpu", [&] {
    float* buffer = padded.data_ptr<float>();
    if (p.distance == Distance::L2) {
      p.channels_last ? fused_feature_map_nhwc<scalar_t, Distance::L2>(in, fusion, buffer)
                      : fused_feature_map_nchw<scalar_t, Distance::L2>(in, fusion, buffer);
    } else {
      p.channels_last ? fused_feature_map_nhwc<scalar_t, Distance::Cosine>(in, fusion, buffer)
                      : fused_feature_map_nchw<scalar_t, Distance::Cosine>(in, fusion, buffer);
    }
  });
  resize_and_score(p, padded.data_ptr<float>(), map.data_ptr<float>(), score.data_ptr<float>());
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad_fast, CPU, m) {
  m.impl("anomaly_map", &anomaly_map_entry<anomaly_map_cpu>);
}

}  // namespace efficientad_fast
