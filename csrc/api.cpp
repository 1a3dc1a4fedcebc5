// The public C++ entry point (include/efficientad_fast/efficientad_fast.h): calls the
// registered op through the dispatcher, so CPU and CUDA tensors reach their kernels
// exactly as torch.ops.efficientad_fast.anomaly_map does from Python.
#include <ATen/core/dispatch/Dispatcher.h>

#include "efficientad_fast/efficientad_fast.h"

namespace efficientad_fast {

namespace {

using AnomalyMapSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double, int64_t,
    at::OptionalIntArrayRef, c10::string_view, std::optional<at::ArrayRef<double>>);

const c10::TypedOperatorHandle<AnomalyMapSignature>& op() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("efficientad_fast::anomaly_map", "")
                                 .typed<AnomalyMapSignature>();
  return handle;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> anomaly_map(const at::Tensor& teacher,
                                               const at::Tensor& student,
                                               const at::Tensor& autoencoder,
                                               const AnomalyMapOptions& options) {
  at::OptionalIntArrayRef output_size;
  if (options.output_size.has_value()) output_size = at::IntArrayRef(*options.output_size);
  std::optional<at::ArrayRef<double>> quantile_values;
  if (options.quantile_values.has_value()) quantile_values = at::ArrayRef<double>(*options.quantile_values);
  return op().call(teacher, student, autoencoder, options.teacher_mean, options.teacher_std,
                   options.quantiles, options.alpha, options.pad, output_size,
                   options.distance, quantile_values);
}

bool op_registered() {
  return c10::Dispatcher::singleton().findSchema({"efficientad_fast::anomaly_map", ""}).has_value();
}

std::string built_kernels() {
  std::string kernels = "cpu";
  const auto handle = c10::Dispatcher::singleton().findSchema({"efficientad_fast::anomaly_map", ""});
  if (handle.has_value() && handle->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) kernels += ",cuda";
  return kernels;
}

}  // namespace efficientad_fast
