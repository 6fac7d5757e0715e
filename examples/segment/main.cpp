// segment: a BLPSeg .pt2 package (blpseg export) run by libtorch without Python.
//
//   segment MODEL.pt2 IMAGE.ppm MASK.pgm [LAM_OPS_LIBRARY]
//
// Reads a binary PPM (P6, 8 bits), normalises it with the mean and std the package records, runs
// the package and writes the class of every pixel as a binary PGM (P5: one byte per pixel, the
// class id). The lam_ops library (default: the one this build made) is loaded first: the package
// calls its operator.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace {

struct Image {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;  // height x width x 3
};

// The next header token of a PNM file, skipping whitespace and # comments.
std::string token(std::istream& in, const std::string& path) {
  std::string t;
  while (in >> std::ws && in.peek() == '#') in.ignore(1 << 20, '\n');
  if (!(in >> t)) throw std::runtime_error(path + ": truncated PPM header");
  return t;
}

int64_t header_int(std::istream& in, const std::string& path, const char* what) {
  const std::string t = token(in, path);
  try {
    size_t used = 0;
    const long long v = std::stoll(t, &used);
    if (used == t.size() && v > 0 && v <= (1 << 16)) return v;
  } catch (const std::exception&) {
  }
  throw std::runtime_error(path + ": bad PPM " + what + " '" + t + "'");
}

Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  if (token(in, path) != "P6") throw std::runtime_error(path + ": not a binary PPM (P6) image");
  Image im;
  im.width = header_int(in, path, "width");
  im.height = header_int(in, path, "height");
  if (header_int(in, path, "maxval") != 255) throw std::runtime_error(path + ": only 8-bit PPM (maxval 255) is read");
  in.get();  // the single whitespace byte before the pixels
  im.rgb.resize(static_cast<size_t>(im.height * im.width * 3));
  if (!in.read(reinterpret_cast<char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size())))
    throw std::runtime_error(path + ": truncated PPM pixels");
  return im;
}

// Written to PATH.tmp, then renamed: a failed write never leaves a partial mask under PATH.
void write_pgm(const std::string& path, const at::Tensor& mask) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << "P5\n" << mask.size(1) << " " << mask.size(0) << "\n255\n";
    out.write(reinterpret_cast<const char*>(mask.data_ptr<uint8_t>()), static_cast<std::streamsize>(mask.numel()));
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

// "0.485,0.456,0.406" -> a (3, 1, 1) tensor.
at::Tensor channel_values(const std::unordered_map<std::string, std::string>& metadata, const std::string& key) {
  const auto it = metadata.find(key);
  if (it == metadata.end()) throw std::runtime_error("the package has no " + key + " (not written by blpseg export)");
  std::vector<float> v;
  std::stringstream ss(it->second);
  for (std::string item; std::getline(ss, item, ',');) v.push_back(std::stof(item));
  if (v.size() != 3) throw std::runtime_error(key + " must hold 3 values, got '" + it->second + "'");
  return at::tensor(v).view({3, 1, 1});
}

int run(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 IMAGE.ppm MASK.pgm [LAM_OPS_LIBRARY]\n";
    return 2;
  }
  // The package's compiled code needs libtorch.so, which this program (linked to libtorch_cpu only,
  // as the lam_ops library) does not load by itself: found through this program's run path.
  for (const std::string library : {std::string("libtorch.so"), std::string(argc == 5 ? argv[4] : LAM_OPS_LIBRARY)}) {
    if (dlopen(library.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr)
      throw std::runtime_error("cannot load " + library + ": " + dlerror());
  }
  // The package checks its inputs' dtype, device, channels and layout only when this is set.
  setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", 0);

  const Image im = read_ppm(argv[2]);
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  const auto metadata = loader.get_metadata();
  const auto device = metadata.count("blpseg.device") ? at::Device(metadata.at("blpseg.device")) : at::Device("cpu");

  const at::Tensor rgb = at::from_blob(const_cast<uint8_t*>(im.rgb.data()), {im.height, im.width, 3}, at::kByte);
  const at::Tensor x = (rgb.permute({2, 0, 1}).to(at::kFloat) / 255 - channel_values(metadata, "blpseg.mean")) /
                       channel_values(metadata, "blpseg.std");
  const std::vector<at::Tensor> outputs = loader.run({x.unsqueeze(0).contiguous().to(device)});
  const at::Tensor logits = outputs.at(0).to(at::kCPU);  // (1, K, H, W)
  if (logits.size(1) > 256) throw std::runtime_error("more than 256 classes do not fit a PGM byte");
  write_pgm(argv[3], logits[0].argmax(0).to(at::kByte).contiguous());
  std::cout << argv[3] << ": " << im.height << "x" << im.width << " mask of " << logits.size(1) << " classes\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {  // the package's own checks and the loader's errors
    std::cerr << "segment: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "segment: error: " << e.what() << "\n";
    return 1;
  }
}
