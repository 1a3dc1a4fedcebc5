// efficientad_fast::anomaly_map: schema, argument checks, CPU kernel and registration.
// The per-pixel math lives in anomaly_map.h, shared with the CUDA kernel.
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

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_features(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 4, "anomaly_map: ", name,
                    " must be a 4-D (N, C, h, w) tensor, got shape ", x.sizes());
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), "anomaly_map: ", name,
                   " must be float32, float16 or bfloat16, got ", x.scalar_type());
}

// Teacher mean or std: C floats on the features' device, as a float32 (C) tensor.
at::Tensor check_channel_stat(const at::Tensor& x, const char* name, int64_t channels,
                              const at::Device& device) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "anomaly_map: ", name,
                   " must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.numel() == channels, "anomaly_map: ", name, " must hold one value per ",
                    "teacher channel (", channels, "), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == device, "anomaly_map: ", name, " is on ", x.device(),
                    " but the features are on ", device);
  return x.reshape({channels}).to(at::kFloat).contiguous();
}

at::Tensor check_quantiles(const at::Tensor& q, const at::Device& device) {
  TORCH_CHECK_TYPE(at::isFloatingType(q.scalar_type()), "anomaly_map: quantiles must be a ",
                   "floating-point tensor, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.numel() == 4, "anomaly_map: quantiles must hold 4 values ",
                    "(q_a_st, q_b_st, q_a_ae, q_b_ae), got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.device() == device, "anomaly_map: quantiles are on ", q.device(),
                    " but the features are on ", device);
  at::Tensor qf = q.reshape({4}).to(at::kFloat).contiguous();
  // Values on a GPU are not read back here: that would synchronize the stream.
  if (qf.is_cpu()) {
    const float* v = qf.data_ptr<float>();
    TORCH_CHECK_VALUE(std::isfinite(v[0]) && std::isfinite(v[1]) && v[1] > v[0],
                      "anomaly_map: quantiles need finite q_b_st > q_a_st, got q_a_st=", v[0],
                      ", q_b_st=", v[1]);
    TORCH_CHECK_VALUE(std::isfinite(v[2]) && std::isfinite(v[3]) && v[3] > v[2],
                      "anomaly_map: quantiles need finite q_b_ae > q_a_ae, got q_a_ae=", v[2],
                      ", q_b_ae=", v[3]);
  }
  return qf;
}

}  // namespace

AnomalyMapInputs check_anomaly_map_inputs(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, std::string_view distance) {
  check_features(teacher, "teacher");
  check_features(student, "student");
  check_features(autoencoder, "autoencoder");
  TORCH_CHECK_TYPE(student.scalar_type() == teacher.scalar_type() &&
                       autoencoder.scalar_type() == teacher.scalar_type(),
                   "anomaly_map: teacher, student and autoencoder must share one dtype, got ",
                   teacher.scalar_type(), ", ", student.scalar_type(), ", ",
                   autoencoder.scalar_type());
  const at::Device device = teacher.device();
  TORCH_CHECK_VALUE(student.device() == device && autoencoder.device() == device,
                    "anomaly_map: teacher, student and autoencoder must be on one device, got ",
                    device, ", ", student.device(), ", ", autoencoder.device());

  AnomalyMapInputs in;
  in.batch = teacher.size(0);
  in.channels = teacher.size(1);
  in.height = teacher.size(2);
  in.width = teacher.size(3);
  TORCH_CHECK_VALUE(in.channels > 0 && in.height > 0 && in.width > 0,
                    "anomaly_map: teacher needs at least one channel and one pixel, got shape ",
                    teacher.sizes());
  TORCH_CHECK_VALUE(student.size(0) == in.batch && student.size(1) == 2 * in.channels &&
                        student.size(2) == in.height && student.size(3) == in.width,
                    "anomaly_map: student must have shape (N, 2C, h, w) = (", in.batch, ", ",
                    2 * in.channels, ", ", in.height, ", ", in.width, ") for teacher shape ",
                    teacher.sizes(), ", got ", student.sizes());
  TORCH_CHECK_VALUE(autoencoder.sizes() == teacher.sizes(),
                    "anomaly_map: autoencoder must have the teacher's shape ", teacher.sizes(),
                    ", got ", autoencoder.sizes());

  TORCH_CHECK_VALUE(teacher_mean.has_value() == teacher_std.has_value(),
                    "anomaly_map: give teacher_mean and teacher_std together, or neither");
  if (teacher_mean.has_value()) {
    in.teacher_mean = check_channel_stat(*teacher_mean, "teacher_mean", in.channels, device);
    in.teacher_std = check_channel_stat(*teacher_std, "teacher_std", in.channels, device);
  }
  if (quantiles.has_value()) in.quantiles = check_quantiles(*quantiles, device);

  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "anomaly_map: alpha must be in [0, 1], got ",
                    alpha);
  in.alpha = static_cast<float>(alpha);
  TORCH_CHECK_VALUE(pad >= 0, "anomaly_map: pad must be >= 0, got ", pad);
  in.pad = pad;
  in.padded_height = in.height + 2 * pad;
  in.padded_width = in.width + 2 * pad;
  if (output_size.has_value()) {
    TORCH_CHECK_VALUE(output_size->size() == 2, "anomaly_map: output_size must be (H, W), got ",
                      *output_size);
    TORCH_CHECK_VALUE((*output_size)[0] > 0 && (*output_size)[1] > 0,
                      "anomaly_map: output_size must be positive, got ", *output_size);
    in.out_height = (*output_size)[0];
    in.out_width = (*output_size)[1];
  } else {
    in.out_height = in.padded_height;
    in.out_width = in.padded_width;
  }
  if (distance == "l2") {
    in.distance = Distance::L2;
  } else if (distance == "cosine") {
    in.distance = Distance::Cosine;
  } else {
    TORCH_CHECK_VALUE(false, "anomaly_map: distance must be 'l2' or 'cosine', got '",
                      std::string(distance), "'");
  }

  // One memory format for all three: the teacher's if it is channels_last, else NCHW.
  in.channels_last = teacher.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                     !teacher.is_contiguous(at::MemoryFormat::Contiguous);
  const auto format = in.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  in.teacher = teacher.contiguous(format);
  in.student = student.contiguous(format);
  in.autoencoder = autoencoder.contiguous(format);
  return in;
}

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
  const int64_t C = in.channels, h = in.height, w = in.width;
  const int64_t plane = h * w;
  const scalar_t* teacher = in.teacher.data_ptr<scalar_t>();
  const scalar_t* student = in.student.data_ptr<scalar_t>();
  const scalar_t* autoencoder = in.autoencoder.data_ptr<scalar_t>();
  const float* mean = in.teacher_mean.defined() ? in.teacher_mean.data_ptr<float>() : nullptr;
  const float* stdev = in.teacher_std.defined() ? in.teacher_std.data_ptr<float>() : nullptr;

  at::parallel_for(0, in.batch * h, 1, [&](int64_t begin, int64_t end) {
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
        const float* __restrict__ t = t_row(teacher + (n * C + c) * plane + y * w, w);
        const float* __restrict__ s_st = s_st_row(student + (n * 2 * C + c) * plane + y * w, w);
        const float* __restrict__ s_ae = s_ae_row(student + (n * 2 * C + C + c) * plane + y * w, w);
        const float* __restrict__ a = a_row(autoencoder + (n * C + c) * plane + y * w, w);
        if (mean != nullptr) {
          const float m = mean[c], sd = stdev[c];
          for (int64_t x = 0; x < w; ++x) st_sums[x].add((t[x] - m) / sd, s_st[x]);
        } else {
          for (int64_t x = 0; x < w; ++x) st_sums[x].add(t[x], s_st[x]);
        }
        for (int64_t x = 0; x < w; ++x) ae_sums[x].add(a[x], s_ae[x]);
      }
      for (int64_t x = 0; x < w; ++x) st_total[x].merge(st_sums[x]);
      for (int64_t x = 0; x < w; ++x) ae_total[x].merge(ae_sums[x]);
      float* out = padded + (n * in.padded_height + y + in.pad) * in.padded_width + in.pad;
      for (int64_t x = 0; x < w; ++x) out[x] = fusion(st_total[x].finish(C), ae_total[x].finish(C));
    }
  });
}

// Stage 1, channels_last: channels are contiguous per pixel; kLanes independent
// partial sums per pixel let the channel loop vectorize without reassociation.
template <typename scalar_t, Distance D>
void fused_feature_map_nhwc(const AnomalyMapInputs& in, const Fusion& fusion, float* padded) {
  constexpr int64_t kLanes = 16;
  const int64_t C = in.channels, h = in.height, w = in.width;
  const scalar_t* teacher = in.teacher.data_ptr<scalar_t>();
  const scalar_t* student = in.student.data_ptr<scalar_t>();
  const scalar_t* autoencoder = in.autoencoder.data_ptr<scalar_t>();
  const float* mean = in.teacher_mean.defined() ? in.teacher_mean.data_ptr<float>() : nullptr;
  const float* stdev = in.teacher_std.defined() ? in.teacher_std.data_ptr<float>() : nullptr;

  at::parallel_for(0, in.batch * h, 1, [&](int64_t begin, int64_t end) {
    FloatRow<scalar_t> t_row, s_row, a_row;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      float* out = padded + (n * in.padded_height + y + in.pad) * in.padded_width + in.pad;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t pixel = (n * h + y) * w + x;
        const float* __restrict__ t = t_row(teacher + pixel * C, C);
        const float* __restrict__ s_st = s_row(student + pixel * 2 * C, 2 * C);
        const float* __restrict__ s_ae = s_st + C;
        const float* __restrict__ a = a_row(autoencoder + pixel * C, C);
        PairSums<D> st[kLanes] = {}, ae[kLanes] = {};
        int64_t c = 0;
        for (; c + kLanes <= C; c += kLanes) {
          if (mean != nullptr) {
            for (int64_t k = 0; k < kLanes; ++k)
              st[k].add((t[c + k] - mean[c + k]) / stdev[c + k], s_st[c + k]);
          } else {
            for (int64_t k = 0; k < kLanes; ++k) st[k].add(t[c + k], s_st[c + k]);
          }
          for (int64_t k = 0; k < kLanes; ++k) ae[k].add(a[c + k], s_ae[c + k]);
        }
        for (; c < C; ++c) {
          const float tv = mean != nullptr ? (t[c] - mean[c]) / stdev[c] : t[c];
          st[0].add(tv, s_st[c]);
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
void resize_and_score(const AnomalyMapInputs& in, const float* padded, float* out, float* score) {
  const int64_t H = in.out_height, W = in.out_width;
  const int64_t Hp = in.padded_height, Wp = in.padded_width;
  const std::vector<LinearTap> taps_y = linear_taps(Hp, H), taps_x = linear_taps(Wp, W);
  std::vector<float> row_max(in.batch * H);
  at::parallel_for(0, in.batch * H, 16, [&](int64_t begin, int64_t end) {
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
  for (int64_t n = 0; n < in.batch; ++n) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t y = 0; y < H; ++y) m = nan_max(m, row_max[n * H + y]);
    score[n] = m;
  }
}

std::tuple<at::Tensor, at::Tensor> anomaly_map_cpu(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, c10::string_view distance) {
  const AnomalyMapInputs in = check_anomaly_map_inputs(
      teacher, student, autoencoder, teacher_mean, teacher_std, quantiles, alpha, pad,
      output_size, distance);
  const auto opts = teacher.options().dtype(at::kFloat);
  at::Tensor map = at::empty({in.batch, 1, in.out_height, in.out_width}, opts);
  at::Tensor score = at::empty({in.batch}, opts);
  if (in.batch == 0) return {map, score};

  const Fusion fusion = Fusion::make(
      in.quantiles.defined() ? in.quantiles.data_ptr<float>() : nullptr, in.alpha);
  at::Tensor padded =
      at::full({in.batch, in.padded_height, in.padded_width}, fusion.border(), opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.teacher.scalar_type(),
                                  "anomaly_map_cpu", [&] {
    float* p = padded.data_ptr<float>();
    if (in.distance == Distance::L2) {
      in.channels_last ? fused_feature_map_nhwc<scalar_t, Distance::L2>(in, fusion, p)
                       : fused_feature_map_nchw<scalar_t, Distance::L2>(in, fusion, p);
    } else {
      in.channels_last ? fused_feature_map_nhwc<scalar_t, Distance::Cosine>(in, fusion, p)
                       : fused_feature_map_nchw<scalar_t, Distance::Cosine>(in, fusion, p);
    }
  });
  resize_and_score(in, padded.data_ptr<float>(), map.data_ptr<float>(), score.data_ptr<float>());
  return {map, score};
}

}  // namespace

TORCH_LIBRARY(efficientad_fast, m) {
  m.def(
      "anomaly_map(Tensor teacher, Tensor student, Tensor autoencoder, Tensor? teacher_mean, "
      "Tensor? teacher_std, Tensor? quantiles, float alpha, int pad, int[]? output_size, "
      "str distance) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(efficientad_fast, CPU, m) { m.impl("anomaly_map", &anomaly_map_cpu); }

}  // namespace efficientad_fast
