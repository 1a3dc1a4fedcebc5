// Argument checking and preparation shared by the CPU and CUDA kernels of
// efficientad_fast::anomaly_map (defined in anomaly_map.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "anomaly_map.h"

namespace efficientad_fast {

// Checked, layout-normalized arguments of one anomaly_map call.
struct AnomalyMapInputs {
  // teacher, student and autoencoder share one memory format: NCHW-contiguous,
  // or channels_last (NHWC) when the teacher arrives that way.
  at::Tensor teacher, student, autoencoder;
  bool channels_last = false;
  // float32 (C) tensors on the features' device, or undefined for no normalization.
  at::Tensor teacher_mean, teacher_std;
  // float32 (4) tensor on the features' device, or undefined for no normalization.
  at::Tensor quantiles;
  float alpha = 0.5f;
  Distance distance = Distance::L2;
  int64_t batch = 0, channels = 0, height = 0, width = 0, pad = 0;
  int64_t padded_height = 0, padded_width = 0, out_height = 0, out_width = 0;
};

AnomalyMapInputs check_anomaly_map_inputs(
    const at::Tensor& teacher, const at::Tensor& student, const at::Tensor& autoencoder,
    const std::optional<at::Tensor>& teacher_mean, const std::optional<at::Tensor>& teacher_std,
    const std::optional<at::Tensor>& quantiles, double alpha, int64_t pad,
    at::OptionalIntArrayRef output_size, std::string_view distance);

}  // namespace efficientad_fast
