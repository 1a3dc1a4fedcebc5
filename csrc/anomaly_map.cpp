// efficientad_fast::anomaly_map: the schema, and the input checks that build the one
// AnomalyMapParams both kernels take (cpu/anomaly_map_cpu.cpp, cuda/anomaly_map_cuda.cu).
// The checks here are the op's authoritative ones: every caller (the Python wrapper,
// torch.ops, exported programs, the C++ API) reaches them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

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

// A zero, negative or non-finite std turns the standardized teacher into inf/NaN maps.
// Values on a GPU are not read back here: that would synchronize the stream.
void check_teacher_std_values(const at::Tensor& std_f32) {
  if (!std_f32.is_cpu()) return;
  const float* v = std_f32.data_ptr<float>();
  for (int64_t c = 0; c < std_f32.numel(); ++c) {
    TORCH_CHECK_VALUE(std::isfinite(v[c]) && v[c] > 0.0f,
                      "anomaly_map: teacher_std must be finite and > 0 in every channel, got ",
                      v[c], " in channel ", c);
  }
}

// The order both forms of the quantiles must have, whether from a CPU tensor (float) or
// numbers (double); the message quotes the values as given.
template <typename T>
void check_quantile_order(T qa_st, T qb_st, T qa_ae, T qb_ae) {
  TORCH_CHECK_VALUE(std::isfinite(qa_st) && std::isfinite(qb_st) && qb_st > qa_st,
                    "anomaly_map: quantiles need finite q_b_st > q_a_st, got q_a_st=", qa_st,
                    ", q_b_st=", qb_st);
  TORCH_CHECK_VALUE(std::isfinite(qa_ae) && std::isfinite(qb_ae) && qb_ae > qa_ae,
                    "anomaly_map: quantiles need finite q_b_ae > q_a_ae, got q_a_ae=", qa_ae,
                    ", q_b_ae=", qb_ae);
}

// The kernels compute in float32: q_a and the scale 0.1 / (q_b - q_a) must be finite there,
// or the map is inf/NaN where the reference's is finite (e.g. q_b - q_a = 1e-300).
template <typename T>
void check_quantile_range(T qa, T qb, const char* name) {
  const float scale = static_cast<float>(T(0.1) / (qb - qa));
  TORCH_CHECK_VALUE(std::isfinite(static_cast<float>(qa)) && std::isfinite(scale),
                    "anomaly_map: quantiles q_a_", name, "=", qa, ", q_b_", name, "=", qb,
                    " do not fit float32, in which the op computes: q_a and 0.1 / (q_b - q_a) ",
                    "must be finite floats (rescale the features or widen the quantiles)");
}

at::Tensor check_quantiles(const at::Tensor& q, const at::Device& device) {
  TORCH_CHECK_TYPE(at::isFloatingType(q.scalar_type()), "anomaly_map: quantiles must be a ",
                   "floating-point tensor, got ", q.scalar_type());
  TORCH_CHECK_VALUE(q.numel() == 4, "anomaly_map: quantiles must hold 4 values ",
                    "(q_a_st, q_b_st, q_a_ae, q_b_ae), got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.device() == device, "anomaly_map: quantiles are on ", q.device(),
                    " but the features are on ", device);
  at::Tensor qf = q.reshape({4}).to(at::kFloat).contiguous();
  // Values on a GPU are not read back here: that would synchronize the stream. On the CPU
  // the float values the kernel uses are checked.
  if (qf.is_cpu()) {
    const float* v = qf.data_ptr<float>();
    check_quantile_order(v[0], v[1], v[2], v[3]);
    check_quantile_range(v[0], v[1], "st");
    check_quantile_range(v[2], v[3], "ae");
  }
  return qf;
}

// Quantiles given as numbers (on the host): checked, and turned into the fusion weights here
// in double, rounded to float once. The reference subtracts them in double too; in float,
// q_b - q_a of close quantiles is 0 for (1, 1 + 1e-9) (an all-NaN map) and 1e-3 off for
// (1000, 1000.01). alpha is checked already (check_options).
void set_quantile_values(at::ArrayRef<double> q, double alpha, AnomalyMapParams& p) {
  TORCH_CHECK_VALUE(q.size() == 4, "anomaly_map: quantile_values must hold 4 values ",
                    "(q_a_st, q_b_st, q_a_ae, q_b_ae), got ", q.size());
  check_quantile_order(q[0], q[1], q[2], q[3]);
  check_quantile_range(q[0], q[1], "st");
  check_quantile_range(q[2], q[3], "ae");
  p.host_fusion.qa_st = static_cast<float>(q[0]);
  p.host_fusion.w_st = static_cast<float>(alpha * (0.1 / (q[1] - q[0])));
  p.host_fusion.qa_ae = static_cast<float>(q[2]);
  p.host_fusion.w_ae = static_cast<float>((1.0 - alpha) * (0.1 / (q[3] - q[2])));
}

// The three feature tensors: dtypes, one device, matching shapes -> the sizes in p.
void check_feature_shapes(const at::Tensor& teacher, const at::Tensor& student,
                          const at::Tensor& autoencoder, AnomalyMapParams& p) {
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
  p.batch = teacher.size(0);
  p.channels = teacher.size(1);
  p.height = teacher.size(2);
  p.width = teacher.size(3);
  TORCH_CHECK_VALUE(p.channels > 0 && p.height > 0 && p.width > 0,
                    "anomaly_map: teacher needs at least one channel and one pixel, got shape ",
                    teacher.sizes());
  TORCH_CHECK_VALUE(student.size(0) == p.batch && student.size(1) == 2 * p.channels &&
                        student.size(2) == p.height && student.size(3) == p.width,
                    "anomaly_map: student must have shape (N, 2C, h, w) = (", p.batch, ", ",
                    2 * p.channels, ", ", p.height, ", ", p.width, ") for teacher shape ",
                    teacher.sizes(), ", got ", student.sizes());
  TORCH_CHECK_VALUE(autoencoder.sizes() == teacher.sizes(),
                    "anomaly_map: autoencoder must have the teacher's shape ", teacher.sizes(),
                    ", got ", autoencoder.sizes());
}

// Whether the kernel of a layout reads x where it is: its lanes run along the channels
// (channels_last) or along a row (NCHW), so that dimension must have stride 1; every other
// stride may be anything (the kernels read FeatureStrides).
bool readable_in_place(const at::Tensor& x, bool channels_last) {
  const int64_t dim = channels_last ? 1 : 3;
  return x.size(dim) == 1 || x.stride(dim) == 1;
}

FeatureStrides strides_of(const at::Tensor& x) {
  auto stride = [&](int64_t d) { return x.size(d) == 1 ? int64_t{0} : x.stride(d); };
  return {stride(0), stride(1), stride(2), stride(3)};
}

// The kernels' layout, from all three inputs (the teacher alone would turn a teacher that is
// a channel slice of a channels_last tensor into NCHW copies of all three): channels_last when
// the inputs its kernel reads in place hold at least as many values as those the NCHW kernel
// reads in place (ties go to channels_last, the model's layout), else NCHW. The inputs the
// chosen kernel reads in place are used as given, with their strides (channel slices,
// channels_last or NCHW, batch or row slices); only the others are copied into its layout.
// Then whether the channels_last CUDA kernel may read 16-byte vectors.
void choose_layout(const at::Tensor& teacher, const at::Tensor& student,
                   const at::Tensor& autoencoder, AnomalyMapInputs& in) {
  AnomalyMapParams& p = in.params;
  int64_t channels_last_values = 0, nchw_values = 0;
  for (const at::Tensor* x : {&teacher, &student, &autoencoder}) {
    if (readable_in_place(*x, true)) channels_last_values += x->numel();
    if (readable_in_place(*x, false)) nchw_values += x->numel();
  }
  p.channels_last = channels_last_values >= nchw_values;
  const auto format = p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto in_layout = [&](const at::Tensor& x) {
    return readable_in_place(x, p.channels_last) ? x : x.contiguous(format);
  };
  in.teacher = in_layout(teacher);
  in.student = in_layout(student);
  in.autoencoder = in_layout(autoencoder);
  p.teacher_strides = strides_of(in.teacher);
  p.student_strides = strides_of(in.student);
  p.autoencoder_strides = strides_of(in.autoencoder);
  // The student is read as two runs of C channels, so C is the length that must fit.
  const int64_t element = teacher.element_size();
  auto fits = [&](const at::Tensor& x, const FeatureStrides& s) {
    return vector_loads_fit(reinterpret_cast<uintptr_t>(x.data_ptr()), s, p.channels, element);
  };
  p.vector_loads = p.channels_last && fits(in.teacher, p.teacher_strides) &&
                   fits(in.student, p.student_strides) &&
                   fits(in.autoencoder, p.autoencoder_strides);
}

// alpha, pad, output_size and distance -> p (after check_feature_shapes).
void check_options(double alpha, int64_t pad, at::OptionalIntArrayRef output_size,
                   std::string_view distance, AnomalyMapParams& p) {
  TORCH_CHECK_VALUE(alpha >= 0.0 && alpha <= 1.0, "anomaly_map: alpha must be in [0, 1], got ",
                    alpha);
  p.alpha = static_cast<float>(alpha);
  TORCH_CHECK_VALUE(pad >= 0, "anomaly_map: pad must be >= 0, got ", pad);
  p.pad = pad;
  p.padded_height = p.height + 2 * pad;
  p.padded_width = p.width + 2 * pad;
  if (output_size.has_value()) {
    TORCH_CHECK_VALUE(output_size->size() == 2, "anomaly_map: output_size must be (H, W), got ",
                      *output_size);
    TORCH_CHECK_VALUE((*output_size)[0] > 0 && (*output_size)[1] > 0,
                      "anomaly_map: output_size must be positive, got ", *output_size);
    p.out_height = (*output_size)[0];
    p.out_width = (*output_size)[1];
  } else {
    p.out_height = p.padded_height;
    p.out_width = p.padded_width;
  }
  if (distance == "l2") {
    p.distance = Distance::L2;
  } else if (distance == "cosine") {
    p.distance = Distance::Cosine;
  } else {
    TORCH_CHECK_VALUE(false, "anomaly_map: distance must be 'l2' or 'cosine', got '",
                      std::string(distance), "'");
  }
}

}  // namespace

AnomalyMapInputs check_anomaly_map_inputs(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, std::string_view distance,
    std::optional<at::ArrayRef<double>> quantile_values) {
  AnomalyMapInputs in;
  AnomalyMapParams& p = in.params;
  check_feature_shapes(teacher, student, autoencoder, p);
  const at::Device device = teacher.device();
  TORCH_CHECK_VALUE(teacher_mean.has_value() == teacher_std.has_value(),
                    "anomaly_map: give teacher_mean and teacher_std together, or neither");
  if (teacher_mean.has_value()) {
    in.teacher_mean = check_channel_stat(*teacher_mean, "teacher_mean", p.channels, device);
    in.teacher_std = check_channel_stat(*teacher_std, "teacher_std", p.channels, device);
    check_teacher_std_values(in.teacher_std);
    p.mean = in.teacher_mean.data_ptr<float>();
    p.stdev = in.teacher_std.data_ptr<float>();
  }
  TORCH_CHECK_VALUE(!(quantiles.has_value() && quantile_values.has_value()),
                    "anomaly_map: give quantiles as a tensor or as quantile_values, not both");
  if (quantiles.has_value()) {
    in.quantiles = check_quantiles(*quantiles, device);
    p.quantiles = in.quantiles.data_ptr<float>();
  }
  check_options(alpha, pad, output_size, distance, p);
  p.host_fusion = Fusion::unnormalized(p.alpha);
  if (quantile_values.has_value()) set_quantile_values(*quantile_values, alpha, p);
  choose_layout(teacher, student, autoencoder, in);
  return in;
}

namespace {

// efficientad_fast::_anomaly_map_layout: what choose_layout makes of three feature tensors,
// for tests and debugging (ops.layout_plan): [channels_last, teacher copied, student copied,
// autoencoder copied, vector loads]. Reads shapes, strides and addresses only.
std::vector<int64_t> anomaly_map_layout(const at::Tensor& teacher, const at::Tensor& student,
                                        const at::Tensor& autoencoder) {
  AnomalyMapInputs in;
  check_feature_shapes(teacher, student, autoencoder, in.params);
  choose_layout(teacher, student, autoencoder, in);
  return {in.params.channels_last, !in.teacher.is_same(teacher), !in.student.is_same(student),
          !in.autoencoder.is_same(autoencoder), in.params.vector_loads};
}

}  // namespace

TORCH_LIBRARY(efficientad_fast, m) {
  m.def(
      "anomaly_map(Tensor teacher, Tensor student, Tensor autoencoder, Tensor? teacher_mean, "
      "Tensor? teacher_std, Tensor? quantiles, float alpha, int pad, int[]? output_size, "
      "str distance, float[]? quantile_values=None) -> (Tensor, Tensor)");
  m.def("_anomaly_map_layout(Tensor teacher, Tensor student, Tensor autoencoder) -> int[]",
        &anomaly_map_layout);
}

}  // namespace efficientad_fast
