// The input checks of efficientad_fast::anomaly_map (defined in anomaly_map.cpp) and the
// entry point every backend registers: check once, build one AnomalyMapParams, allocate
// the outputs, run the backend's kernel. Host-only (ATen); kept apart from
// anomaly_map.h, which stays plain C++ so that it compiles as device code.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "anomaly_map.h"

namespace efficientad_fast {

// Checked, layout-normalized arguments of one anomaly_map call.
struct AnomalyMapInputs {
  // teacher, student and autoencoder, each as given when the kernel of the chosen layout
  // (params.channels_last) reads it in place, else a copy in that layout; params holds their
  // strides. The rule: choose_layout in anomaly_map.cpp.
  at::Tensor teacher, student, autoencoder;
  // float32 tensors on the features' device that params' pointers point into; undefined
  // when not given.
  at::Tensor teacher_mean, teacher_std, quantiles;
  AnomalyMapParams params;
};

// Checks every argument (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE naming it) and prepares them.
// The quantiles come as a tensor (`quantiles`, e.g. a model's buffer) or as four numbers
// (`quantile_values`), not both.
AnomalyMapInputs check_anomaly_map_inputs(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, std::string_view distance,
    std::optional<at::ArrayRef<double>> quantile_values);

// One backend's kernel: fills map (N, 1, H, W) and score (N), float32, for N > 0.
using AnomalyMapKernel = void (*)(const AnomalyMapInputs& in, at::Tensor& map, at::Tensor& score);

// The op for one backend (registered by TORCH_LIBRARY_IMPL as &anomaly_map_entry<kernel>).
template <AnomalyMapKernel kernel>
std::tuple<at::Tensor, at::Tensor> anomaly_map_entry(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, c10::string_view distance,
    std::optional<at::ArrayRef<double>> quantile_values) {
  const AnomalyMapInputs in = check_anomaly_map_inputs(
      teacher, student, autoencoder, teacher_mean, teacher_std, quantiles, alpha, pad,
      output_size, distance, quantile_values);
  const AnomalyMapParams& p = in.params;
  const auto opts = teacher.options().dtype(at::kFloat);
  at::Tensor map = at::empty({p.batch, 1, p.out_height, p.out_width}, opts);
  at::Tensor score = at::empty({p.batch}, opts);
  if (p.batch > 0) kernel(in, map, score);
  return {map, score};
}

}  // namespace efficientad_fast
