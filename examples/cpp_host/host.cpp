// Example C++ host: runs an EfficientAD model exported by
//   efficientad-fast export --model model.pt --format aoti --out model.pt2
// on one image, prints the image score and its label (score above the image_threshold in
// the package's metadata: anomalous, else normal) and writes the anomaly map. No Python.
//
//   efficientad_fast_host MODEL.pt2 IMAGE.ppm OUT
//
// IMAGE: binary PPM (P6, 8-bit RGB) of the size the package was exported for; the
// reader below keeps the example free of image libraries (convert other formats with
// e.g. `convert in.png out.ppm` or Pillow). Writes OUT.f32 (the map, raw little-endian
// float32, H x W row-major) and OUT.pgm (the map scaled to 8 bits for viewing).
// Exit status: 0 ok, 2 bad arguments or input, 3 package cannot be loaded or run.
#include <efficientad_fast/efficientad_fast.h>
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// An input the user must fix: the message says what and where.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Next header token of a PNM file, skipping whitespace and # comments.
std::string pnm_token(std::istream& in) {
  std::string token;
  while (in) {
    const int c = in.get();
    if (c == '#') {
      std::string comment;
      std::getline(in, comment);
    } else if (std::isspace(c) || c == EOF) {
      if (!token.empty()) return token;
    } else {
      token.push_back(static_cast<char>(c));
    }
  }
  return token;
}

// A binary PPM (P6, maxval 255) as a uint8 (H, W, 3) tensor.
at::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open image " + path);
  std::string magic = pnm_token(in).substr(0, 8);
  if (magic != "P6") {
    for (char& c : magic)  // quote what the file starts with, printable
      if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
    throw InputError(path + ": not a binary PPM (P6) image (starts with '" + magic +
                     "'); convert it, e.g. with Pillow: Image.open(f).convert('RGB').save('x.ppm')");
  }
  int64_t width = 0, height = 0, maxval = 0;
  try {
    width = std::stoll(pnm_token(in));
    height = std::stoll(pnm_token(in));
    maxval = std::stoll(pnm_token(in));
  } catch (const std::exception&) {
    throw InputError(path + ": malformed PPM header");
  }
  if (width <= 0 || height <= 0) throw InputError(path + ": PPM size must be positive");
  if (maxval != 255) throw InputError(path + ": only 8-bit PPM (maxval 255) is read, got maxval " +
                                      std::to_string(maxval));
  auto image = at::empty({height, width, 3}, at::kByte);
  in.read(reinterpret_cast<char*>(image.data_ptr<uint8_t>()), image.numel());
  if (in.gcount() != image.numel())
    throw InputError(path + ": truncated PPM, expected " + std::to_string(image.numel()) +
                     " pixel bytes for " + std::to_string(width) + "x" + std::to_string(height) +
                     ", got " + std::to_string(in.gcount()));
  return image;
}

void write_outputs(const at::Tensor& map, const std::string& out) {
  const auto m = map.to(at::kCPU).contiguous();  // (H, W) float32
  std::ofstream raw(out + ".f32", std::ios::binary);
  raw.write(reinterpret_cast<const char*>(m.data_ptr<float>()), m.numel() * sizeof(float));
  if (!raw) throw std::runtime_error("cannot write " + out + ".f32");
  // The PGM is for looking at: the map's min..max stretched to 0..255.
  const float lo = m.min().item<float>(), hi = m.max().item<float>();
  const auto gray = ((m - lo) / std::max(hi - lo, 1e-12f) * 255.f).round().clamp(0, 255).to(at::kByte);
  std::ofstream pgm(out + ".pgm", std::ios::binary);
  pgm << "P5\n" << m.size(1) << " " << m.size(0) << "\n255\n";
  pgm.write(reinterpret_cast<const char*>(gray.data_ptr<uint8_t>()), gray.numel());
  if (!pgm) throw std::runtime_error("cannot write " + out + ".pgm");
}

std::string metadata_value(const std::unordered_map<std::string, std::string>& metadata,
                           const std::string& key) {
  const auto it = metadata.find(key);
  return it == metadata.end() ? std::string() : it->second;
}

int run(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 IMAGE.ppm OUT\n"
              << "  runs an efficientad_fast AOTInductor package on one binary PPM image,\n"
              << "  prints the score and writes OUT.f32 (raw float32 map) and OUT.pgm\n";
    return 2;
  }
  const std::string package = argv[1], image_path = argv[2], out = argv[3];
  if (!std::filesystem::is_regular_file(package)) throw InputError("no model package at " + package);
  if (!std::filesystem::is_regular_file(image_path)) throw InputError("no image at " + image_path);
  // Packages call efficientad_fast::anomaly_map; linking the op library registered it.
  if (!efficientad_fast::op_registered())
    throw std::runtime_error("the op efficientad_fast::anomaly_map is not registered: link libefficientad_fast");

  c10::InferenceMode inference;  // no autograd bookkeeping
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  try {
    loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package);
  } catch (const c10::Error& e) {
    std::cerr << "error: cannot load " << package
              << " as an AOTInductor package (made by `efficientad-fast export --format aoti`):\n"
              << e.what_without_backtrace() << "\n";
    return 3;
  }
  const auto metadata = loader->get_metadata();
  if (metadata_value(metadata, "format") != "efficientad_fast.predict")
    throw InputError(package + " is an AOTInductor package but not an efficientad_fast model "
                     "(its metadata has no format=efficientad_fast.predict); export one with "
                     "`efficientad-fast export --format aoti`");
  int64_t want_h = 0, want_w = 0;
  try {
    want_h = std::stoll(metadata_value(metadata, "image_height"));
    want_w = std::stoll(metadata_value(metadata, "image_width"));
  } catch (const std::exception&) {
    throw InputError(package + ": its metadata lacks image_height/image_width; re-export it");
  }
  const std::string device = metadata_value(metadata, "device").empty() ? "cpu" : metadata_value(metadata, "device");
  // Schema version 2 carries the calibrated decision threshold ("" when the model had none).
  const std::string threshold_text = metadata_value(metadata, "image_threshold");
  double image_threshold = 0;  // compared in float32, as torch compares a float32 score
  const bool has_threshold = !threshold_text.empty();
  if (has_threshold) {
    try {
      image_threshold = std::stod(threshold_text);
    } catch (const std::exception&) {
      throw InputError(package + ": its metadata image_threshold '" + threshold_text + "' is not a number");
    }
  }

  const at::Tensor image = read_ppm(image_path);
  if (image.size(0) != want_h || image.size(1) != want_w)
    throw InputError(image_path + " is " + std::to_string(image.size(1)) + "x" +
                     std::to_string(image.size(0)) + " (WxH) but " + package +
                     " was exported for " + std::to_string(want_w) + "x" + std::to_string(want_h) +
                     "; resize the image or export for its size (--image-size)");
  // (H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1], as the package expects.
  const at::Tensor batch =
      image.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat).div(255).contiguous().to(device);

  std::vector<at::Tensor> outputs;
  try {
    outputs = loader->run({batch});
  } catch (const c10::Error& e) {
    std::cerr << "error: running " << package << " failed:\n" << e.what_without_backtrace() << "\n";
    return 3;
  }
  if (outputs.size() != 2) throw std::runtime_error("expected (anomaly_map, score) from the package");
  const at::Tensor map = outputs[0][0][0], score = outputs[1].to(at::kCPU);
  write_outputs(map, out);
  const float image_score = score[0].item<float>();
  std::printf("score %.9g\n", image_score);
  if (has_threshold)
    std::printf("label %s (threshold %.9g)\n", image_score > static_cast<float>(image_threshold) ? "anomalous" : "normal",
                image_threshold);
  else
    std::printf("label unknown (the package has no image_threshold: calibrate the model, export again)\n");
  std::printf("map %s.f32 (%lld x %lld float32), %s.pgm\n", out.c_str(),
              static_cast<long long>(map.size(0)), static_cast<long long>(map.size(1)), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const InputError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {  // the message without libtorch's C++ backtrace
    std::cerr << "error: " << e.what_without_backtrace() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  }
}
