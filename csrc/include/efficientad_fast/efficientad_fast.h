// Public C++ API of the efficientad_fast op library (libefficientad_fast.so).
//
// Linking (or dlopen-ing) the library registers the custom op
// `efficientad_fast::anomaly_map` with the PyTorch dispatcher: its CPU kernel always,
// its CUDA kernel when the library was built with CUDA. The same registration serves
// AOTInductor packages exported by `efficientad-fast export --format aoti`, which call
// the op through the dispatcher: load this library before loading such a package.
//
// CMake:  find_package(efficientad_fast REQUIRED)
//         target_link_libraries(app PRIVATE efficientad_fast::efficientad_fast)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace efficientad_fast {

// Options of anomaly_map; the defaults are EfficientAD's (anomalib's) scoring.
struct AnomalyMapOptions {
  // (C) per-channel teacher statistics: the teacher features are standardized as
  // (teacher - mean) / std first. Give both or neither (features already standardized).
  std::optional<at::Tensor> teacher_mean;
  std::optional<at::Tensor> teacher_std;
  // (4) map quantiles q_a_st, q_b_st, q_a_ae, q_b_ae: each map becomes
  // 0.1 * (d - q_a) / (q_b - q_a). Unset: maps are not normalized (an uncalibrated model).
  std::optional<at::Tensor> quantiles;
  // The same four quantiles as numbers (set at most one of the two): no tensor is made or
  // copied to the device per call.
  std::optional<std::vector<double>> quantile_values;
  // Weight of the student-teacher map; 1 - alpha weighs the autoencoder-student map.
  double alpha = 0.5;
  // Zero padding added to each side of the feature-resolution maps (4 in anomalib).
  int64_t pad = 4;
  // {H, W} of the output map, usually the image size. Unset: the padded feature size.
  std::optional<std::vector<int64_t>> output_size;
  // "l2" (mean squared difference over channels, the paper) or "cosine".
  std::string distance = "l2";
};

// EfficientAD's anomaly map and image score from the three networks' features, fused
// into one pass. Dispatches to the CPU or CUDA kernel by the tensors' device.
//   teacher:     (N, C, h, w) float32, float16 or bfloat16, NCHW or channels_last
//   student:     (N, 2C, h, w), same dtype and device
//   autoencoder: (N, C, h, w), same dtype and device
// Returns {anomaly_map float32 (N, 1, H, W), score float32 (N)}, score = max of the map.
// Bad arguments throw c10::Error (c10::ValueError / c10::TypeError) naming the argument.
std::tuple<at::Tensor, at::Tensor> anomaly_map(const at::Tensor& teacher,
                                               const at::Tensor& student,
                                               const at::Tensor& autoencoder,
                                               const AnomalyMapOptions& options = {});

// True once the op's schema is in the dispatcher (always, when this library is loaded);
// calling it also makes sure a linker keeps the library (and its registration) in a host.
bool op_registered();

// "cpu" or "cpu,cuda": the kernels this build of the library registered.
std::string built_kernels();

}  // namespace efficientad_fast
