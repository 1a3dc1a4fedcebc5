// Example: the fused op alone, on feature tensors a C++ host computed itself (its own
// teacher, student and autoencoder networks, in any framework that gives at::Tensor).
//
//   efficientad_fast_op_example [N]
//
// Builds deterministic features (sin of an index ramp, so a test can rebuild them in
// Python bit for bit), calls efficientad_fast::anomaly_map with anomalib's options and
// prints the scores and the map's sum.
#include <efficientad_fast/efficientad_fast.h>
#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>
#include <string>

namespace {

at::Tensor features(int64_t n, int64_t c, int64_t h, int64_t w, double phase) {
  return at::arange(n * c * h * w, at::kFloat).mul(0.37).add(phase).sin().reshape({n, c, h, w});
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int64_t n = argc > 1 ? std::stoll(argv[1]) : 2;
    const int64_t c = 384, h = 56, w = 56;
    const auto teacher = features(n, c, h, w, 0.0);
    const auto student = features(n, 2 * c, h, w, 1.0);
    const auto autoencoder = features(n, c, h, w, 2.0);

    efficientad_fast::AnomalyMapOptions options;
    options.teacher_mean = at::full({c}, 0.1f);
    options.teacher_std = at::full({c}, 2.0f);
    options.quantiles = at::tensor({0.2f, 1.5f, 0.3f, 1.8f});
    options.output_size = std::vector<int64_t>{256, 256};
    const auto [map, score] = efficientad_fast::anomaly_map(teacher, student, autoencoder, options);

    std::printf("kernels %s\n", efficientad_fast::built_kernels().c_str());
    std::printf("map %lld %lld %lld %lld sum %.9g\n", static_cast<long long>(map.size(0)),
                static_cast<long long>(map.size(1)), static_cast<long long>(map.size(2)),
                static_cast<long long>(map.size(3)), map.sum().item<double>());
    for (int64_t i = 0; i < n; ++i) std::printf("score %.9g\n", score[i].item<float>());
    return 0;
  } catch (const std::exception& e) {  // bad options arrive as c10::Error with the reason
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
