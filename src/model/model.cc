#include "magma/model/model.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/BFloat16.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "magma/model/kernels.h"
#include "magma/model/safetensors.h"
#include "magma/util/logging.h"

namespace magma::model {
namespace {

const char kTrunk[] = "vision_tower.clip_vision_model.trunk.";
const char kLm[] = "language_model.model.";

// Bytes the kernel reports as available for new allocations without
// swapping (/proc/meminfo MemAvailable), or -1 when unknown.
int64_t MemAvailableBytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %" SCNd64 " kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

// One anonymous mapping, aligned to 2 MiB and advised for transparent huge
// pages, that weight matrices are copied into. Tensors carved from it keep it
// alive through their deleters.
class ResidentArena {
 public:
  static absl::StatusOr<std::shared_ptr<ResidentArena>> Create(size_t bytes) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t mapped = bytes + kHuge;
    void* base = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot map ", bytes, " bytes for resident weights"));
    }
    auto arena = std::shared_ptr<ResidentArena>(new ResidentArena(base, mapped));
    arena->next_ = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) & ~(kHuge - 1);
    arena->end_ = reinterpret_cast<uintptr_t>(base) + mapped;
    // Advisory: without THP support the memory is still correct, only slower.
    (void)madvise(reinterpret_cast<void*>(arena->next_), arena->end_ - arena->next_, MADV_HUGEPAGE);
    return arena;
  }
  ResidentArena(const ResidentArena&) = delete;
  ResidentArena& operator=(const ResidentArena&) = delete;
  ~ResidentArena() { ::munmap(base_, mapped_); }

  // Page-aligned block of `bytes`. REQUIRES: the total taken fits the size
  // given to Create (the loader sizes it from the same list).
  void* Take(size_t bytes) {
    void* p = reinterpret_cast<void*>(next_);
    next_ = (next_ + bytes + 4095) & ~uintptr_t{4095};
    TORCH_CHECK(next_ <= end_, "resident weight arena overflow");
    return p;
  }
  // Bytes a block of `bytes` takes, alignment included.
  static size_t Footprint(size_t bytes) { return (bytes + 4095) & ~size_t{4095}; }

 private:
  ResidentArena(void* base, size_t mapped) : base_(base), mapped_(mapped) {}
  void* base_;
  size_t mapped_;
  uintptr_t next_ = 0, end_ = 0;
};

// Decoder matrices: the weights every decode step streams in full.
bool IsDecoderMatrix(const std::string& name) {
  static const std::string kLayers = absl::StrCat(kLm, "layers.");
  return name == "language_model.lm_head.weight" ||
         (name.rfind(kLayers, 0) == 0 && name.find("layernorm") == std::string::npos);
}

at::ScalarType ToAten(StDType t) {
  switch (t) {
    case StDType::kF64: return at::kDouble;
    case StDType::kF32: return at::kFloat;
    case StDType::kF16: return at::kHalf;
    case StDType::kBF16: return at::kBFloat16;
    case StDType::kI64: return at::kLong;
    case StDType::kI32: return at::kInt;
    case StDType::kI16: return at::kShort;
    case StDType::kI8: return at::kChar;
    case StDType::kU8: return at::kByte;
    case StDType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// Runs `fn`, turning libtorch exceptions into INTERNAL.
template <typename Fn>
auto Guarded(const char* what, Fn&& fn) -> absl::StatusOr<decltype(fn())> {
  try {
    return fn();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

// Activations are float32 throughout; only large weight matrices take the
// runtime dtype. In bfloat16 mode the matrix products round their inputs to
// bfloat16 and accumulate in float32, everything else stays float32.

// Rows up to which LinearBf16 (weights streamed once per batch) beats oneDNN.
constexpr int64_t kStreamedRows = 16;

at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  if (w.scalar_type() == at::kFloat) return at::linear(x, w, b);
  if (x.numel() / x.size(-1) <= kStreamedRows) return LinearBf16(x, w, b);
  return LinearBf16Gemm(x, w, b);
}

at::Tensor Conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride, int64_t padding,
                  int64_t groups) {
  if (w.scalar_type() == at::kFloat) return at::conv2d(x, w, b, {stride, stride}, {padding, padding}, {1, 1}, groups);
  if (!HasAvx512Bf16()) {
    // No bfloat16 dot products: the same products (x rounded to bfloat16,
    // exact weights) in float32, as emulated bfloat16 is many times slower.
    // The sums stay float32 here; oneDNN's below come back in bfloat16.
    return at::conv2d(x.to(at::kBFloat16).to(at::kFloat), w.to(at::kFloat), b.defined() ? b.to(at::kFloat) : b,
                      {stride, stride}, {padding, padding}, {1, 1}, groups);
  }
  at::Tensor y = at::conv2d(x.to(w.scalar_type()), w, {}, {stride, stride}, {padding, padding}, {1, 1}, groups);
  return y.to(at::kFloat).add_(b.view({1, -1, 1, 1}));
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor var = x.pow(2).mean(-1, /*keepdim=*/true);
  return w * (x * at::rsqrt(var + eps));
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// LayerNorm over channels of an NCHW tensor (timm LayerNorm2d).
at::Tensor LayerNorm2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  at::Tensor y = x.permute({0, 2, 3, 1});
  y = at::layer_norm(y, {x.size(1)}, w, b, eps);
  return y.permute({0, 3, 1, 2});
}

constexpr double kVisionEps = 1e-5;

}  // namespace

struct MagmaModel::Weights {
  struct Block {
    at::Tensor dw_w, dw_b, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, gamma;
  };
  struct Stage {
    bool downsample = false;
    at::Tensor ds_norm_w, ds_norm_b, ds_conv_w, ds_conv_b;
    std::vector<Block> blocks;
  };
  struct Layer {
    at::Tensor q, k, v, o, gate, up, down, in_norm, post_norm;
  };
  at::Tensor stem_w, stem_b, stem_norm_w, stem_norm_b;
  std::vector<Stage> stages;
  at::Tensor proj0_w, proj0_b, proj2_w, proj2_b, row_sep;
  at::Tensor embed, final_norm, lm_head;
  std::vector<Layer> layers;
  at::Tensor rope_cos, rope_sin;  // [max_pos, head_dim] float32
};

absl::StatusOr<at::ScalarType> ParseDType(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "bfloat16") return at::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "': expected float32 or bfloat16"));
}

// ---------------------------------------------------------------- KvCache

KvCache::KvCache(const TextConfig& text, int slots, int capacity, at::ScalarType dtype)
    : capacity_(capacity), lengths_(slots, 0), used_(slots, false) {
  const auto opts = at::TensorOptions().dtype(dtype);
  for (int64_t i = 0; i < text.num_layers; ++i) {
    k_.push_back(at::zeros({slots, text.num_kv_heads, capacity, text.head_dim}, opts));
    v_.push_back(at::zeros({slots, text.num_kv_heads, capacity, text.head_dim}, opts));
  }
}

int KvCache::Allocate() {
  for (size_t i = 0; i < used_.size(); ++i) {
    if (!used_[i]) {
      used_[i] = true;
      lengths_[i] = 0;
      return static_cast<int>(i);
    }
  }
  return -1;
}

void KvCache::Release(int slot) {
  used_[slot] = false;
  lengths_[slot] = 0;
}

int KvCache::num_free() const { return static_cast<int>(std::count(used_.begin(), used_.end(), false)); }

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : k_) total += t.numel() * t.element_size();
  for (const auto& t : v_) total += t.numel() * t.element_size();
  return total;
}

int64_t KvCache::Snapshot::bytes() const {
  int64_t total = 0;
  for (const auto& t : k) total += t.numel() * t.element_size();
  for (const auto& t : v) total += t.numel() * t.element_size();
  return total;
}

KvCache::Snapshot KvCache::Save(int slot, int64_t positions) const {
  c10::InferenceMode guard;
  Snapshot s;
  s.positions = positions;
  for (size_t l = 0; l < k_.size(); ++l) {
    s.k.push_back(k_[l][slot].narrow(1, 0, positions).clone());
    s.v.push_back(v_[l][slot].narrow(1, 0, positions).clone());
  }
  return s;
}

void KvCache::Restore(int slot, const Snapshot& s) {
  c10::InferenceMode guard;
  for (size_t l = 0; l < k_.size(); ++l) {
    k_[l][slot].narrow(1, 0, s.positions).copy_(s.k[l]);
    v_[l][slot].narrow(1, 0, s.positions).copy_(s.v[l]);
  }
  lengths_[slot] = static_cast<int>(s.positions);
}

// ---------------------------------------------------------------- loading

MagmaModel::MagmaModel() : w_(std::make_unique<Weights>()) {}
MagmaModel::~MagmaModel() = default;

absl::StatusOr<std::unique_ptr<MagmaModel>> MagmaModel::Load(const std::string& dir,
                                                             const LoadOptions& options) {
  std::unique_ptr<MagmaModel> model(new MagmaModel());
  absl::Status status;
  try {
    status = model->Init(dir, options);
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what()));
  }
  if (!status.ok()) return status;
  return model;
}

absl::Status MagmaModel::Init(const std::string& dir, const LoadOptions& options) {
  c10::InferenceMode guard;
  const absl::Time start = absl::Now();
  auto dtype = ParseDType(options.dtype);
  if (!dtype.ok()) return dtype.status();
  dtype_ = *dtype;
  vision_dtype_ = dtype_;
  if (!options.vision_dtype.empty()) {
    auto vd = ParseDType(options.vision_dtype);
    if (!vd.ok()) return vd.status();
    vision_dtype_ = *vd;
  }
  auto config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  config_ = *std::move(config);
  name_ = std::filesystem::path(dir).lexically_normal().filename().string();
  if (name_.empty()) name_ = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  checkpoint_ = *std::move(ckpt);

  // Infer the tower's shape from the tensors present.
  for (int s = 0;; ++s) {
    int64_t depth = 0;
    while (checkpoint_->Find(absl::StrCat(kTrunk, "stages.", s, ".blocks.", depth, ".conv_dw.weight"))) ++depth;
    if (depth == 0) break;
    const TensorView* dw = checkpoint_->Find(absl::StrCat(kTrunk, "stages.", s, ".blocks.0.conv_dw.weight"));
    vision_depths_.push_back(depth);
    vision_dims_.push_back(dw->shape.empty() ? 0 : dw->shape[0]);
  }
  if (vision_depths_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": no ConvNeXt stages found (expected tensors named ",
                                                   kTrunk, "stages.0.blocks.0.*)"));
  }
  const TextConfig& t = config_.text;
  const TensorView* embed_view = checkpoint_->Find(absl::StrCat(kLm, "embed_tokens.weight"));
  vocab_size_ = (embed_view != nullptr && embed_view->shape.size() == 2) ? embed_view->shape[0] : t.vocab_size;
  if (config_.vision.mm_hidden_size != vision_dims_.back()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: vision_config.mm_hidden_size is ", config_.vision.mm_hidden_size,
        " but the tower's last stage has ", vision_dims_.back(), " channels"));
  }

  // The full list of expected parameters with shapes.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  auto want = [&](std::string name, std::vector<int64_t> shape) { expected.emplace_back(std::move(name), std::move(shape)); };
  const int64_t d0 = vision_dims_[0];
  // The stem is a patch_size x patch_size convolution at stride patch_size
  // (4 in Magma's tower; timm allows others), and every later stage halves
  // the resolution: feature rows must stay 32 pixels apart, as the image
  // token layout assumes.
  if (const TensorView* stem = checkpoint_->Find(absl::StrCat(kTrunk, "stem.0.weight"));
      stem != nullptr && stem->shape.size() == 4) {
    vision_patch_ = stem->shape[3];
  }
  int64_t row_stride = vision_patch_;
  for (size_t s = 1; s < vision_depths_.size() && row_stride <= 32; ++s) row_stride *= 2;
  if (vision_patch_ < 1 || row_stride != 32) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": a ConvNeXt stem of patch size ", vision_patch_, " and ",
                                                   vision_depths_.size(),
                                                   " stages gives feature rows that are not 32 pixels apart"));
  }
  want(absl::StrCat(kTrunk, "stem.0.weight"), {d0, 3, vision_patch_, vision_patch_});
  want(absl::StrCat(kTrunk, "stem.0.bias"), {d0});
  want(absl::StrCat(kTrunk, "stem.1.weight"), {d0});
  want(absl::StrCat(kTrunk, "stem.1.bias"), {d0});
  for (size_t s = 0; s < vision_depths_.size(); ++s) {
    const int64_t d = vision_dims_[s];
    const std::string p = absl::StrCat(kTrunk, "stages.", s, ".");
    if (s > 0) {
      const int64_t prev = vision_dims_[s - 1];
      want(p + "downsample.0.weight", {prev});
      want(p + "downsample.0.bias", {prev});
      want(p + "downsample.1.weight", {d, prev, 2, 2});
      want(p + "downsample.1.bias", {d});
    }
    for (int64_t j = 0; j < vision_depths_[s]; ++j) {
      const std::string b = absl::StrCat(p, "blocks.", j, ".");
      want(b + "conv_dw.weight", {d, 1, 7, 7});
      want(b + "conv_dw.bias", {d});
      want(b + "norm.weight", {d});
      want(b + "norm.bias", {d});
      want(b + "mlp.fc1.weight", {4 * d, d});
      want(b + "mlp.fc1.bias", {4 * d});
      want(b + "mlp.fc2.weight", {d, 4 * d});
      want(b + "mlp.fc2.bias", {d});
      want(b + "gamma", {d});
    }
  }
  const int64_t h = t.hidden_size, mm = config_.vision.mm_hidden_size;
  want("multi_modal_projector.proj.0.weight", {h, mm});
  want("multi_modal_projector.proj.0.bias", {h});
  want("multi_modal_projector.proj.2.weight", {h, h});
  want("multi_modal_projector.proj.2.bias", {h});
  want("multi_modal_projector.row_seperator", {1, 1, h});
  want(absl::StrCat(kLm, "embed_tokens.weight"), {vocab_size_, h});
  want(absl::StrCat(kLm, "norm.weight"), {h});
  want("language_model.lm_head.weight", {vocab_size_, h});
  const int64_t qd = t.num_heads * t.head_dim, kvd = t.num_kv_heads * t.head_dim;
  for (int64_t i = 0; i < t.num_layers; ++i) {
    const std::string p = absl::StrCat(kLm, "layers.", i, ".");
    want(p + "self_attn.q_proj.weight", {qd, h});
    want(p + "self_attn.k_proj.weight", {kvd, h});
    want(p + "self_attn.v_proj.weight", {kvd, h});
    want(p + "self_attn.o_proj.weight", {h, qd});
    want(p + "mlp.gate_proj.weight", {t.intermediate_size, h});
    want(p + "mlp.up_proj.weight", {t.intermediate_size, h});
    want(p + "mlp.down_proj.weight", {h, t.intermediate_size});
    want(p + "input_layernorm.weight", {h});
    want(p + "post_attention_layernorm.weight", {h});
  }

  std::vector<std::string> problems;
  for (const auto& [name, shape] : expected) {
    const TensorView* v = checkpoint_->Find(name);
    if (v == nullptr) {
      problems.push_back(absl::StrCat("missing ", name));
    } else if (v->shape != shape) {
      problems.push_back(absl::StrCat(name, " has shape [", absl::StrJoin(v->shape, ", "), "], expected [",
                                      absl::StrJoin(shape, ", "), "]"));
    } else if (v->dtype != StDType::kF32 && v->dtype != StDType::kF16 && v->dtype != StDType::kBF16) {
      problems.push_back(absl::StrCat(name, " is stored as ", StDTypeName(v->dtype), " (need F32, F16 or BF16)"));
    }
  }
  if (!problems.empty()) {
    const size_t shown = std::min<size_t>(problems.size(), 20);
    std::string more = problems.size() > shown ? absl::StrCat("; and ", problems.size() - shown, " more") : "";
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": checkpoint does not match config.json (", problems.size(), " problems): ",
        absl::StrJoin(problems.begin(), problems.begin() + shown, "; "), more));
  }
  std::set<std::string> used;
  for (const auto& e : expected) used.insert(e.first);
  for (const auto& [name, view] : checkpoint_->tensors()) {
    if (used.count(name) == 0) MAGMA_LOG_DEBUG("unused checkpoint tensor {}", name);
  }

  // Decoder matrices resident in huge-page memory, or used from the mapping.
  if (options.weights != "auto" && options.weights != "mapped" && options.weights != "resident") {
    return absl::InvalidArgumentError(
        absl::StrCat("weights must be auto, mapped or resident, got '", options.weights, "'"));
  }
  size_t resident_bytes = 0;
  for (const auto& e : expected) {
    if (IsDecoderMatrix(e.first)) {
      resident_bytes += ResidentArena::Footprint(checkpoint_->Find(e.first)->NumElements() * at::elementSize(dtype_));
    }
  }
  const int64_t available = MemAvailableBytes();
  const bool resident = options.weights == "resident" ||
                        (options.weights == "auto" && available > 0 &&
                         static_cast<int64_t>(resident_bytes) <= available / 2);
  std::shared_ptr<ResidentArena> arena;
  if (resident) {
    auto a = ResidentArena::Create(resident_bytes);
    if (!a.ok()) return a.status();
    arena = *std::move(a);
    MAGMA_LOG_INFO("decoder matrices resident in huge-page memory: {:.2f} GB", resident_bytes / 1e9);
  } else {
    MAGMA_LOG_INFO("decoder matrices used from the checkpoint mapping ({:.2f} GB; {:.2f} GB available)",
                   resident_bytes / 1e9, available / 1e9);
  }

  // Materialise: zero-copy views of the mapping when the stored dtype is the
  // runtime dtype, else a converted copy (the mapping's pages are then dropped);
  // decoder matrices go to the resident arena when there is one.
  int64_t total_bytes = 0, loaded_bytes = 0, next_report = int64_t{1} << 30;
  for (const auto& e : expected) total_bytes += checkpoint_->Find(e.first)->nbytes;
  size_t loaded_tensors = 0;
  std::vector<const TensorView*> mapped;  // weights used in place from the mapping
  auto get = [&](const std::string& name) {
    const TensorView* v = checkpoint_->Find(name);
    const at::ScalarType stored = ToAten(v->dtype);
    at::Tensor view = at::from_blob(const_cast<void*>(v->data), v->shape, at::TensorOptions().dtype(stored));
    at::Tensor out;
    const bool aligned = reinterpret_cast<uintptr_t>(v->data) % StDTypeSize(v->dtype) == 0;
    // Vectors (norms, biases, layer scales, the row separator) are tiny and
    // used in float32 arithmetic; matrices and convolutions take the runtime dtype.
    const bool vision = name.rfind("vision_tower.", 0) == 0 || name.rfind("multi_modal_projector.", 0) == 0;
    const at::ScalarType matrix_dtype = vision ? vision_dtype_ : dtype_;
    const at::ScalarType target =
        v->shape.size() >= 2 && v->NumElements() != v->shape.back() ? matrix_dtype : at::kFloat;
    const bool to_arena = arena != nullptr && IsDecoderMatrix(name);
    const bool in_place = !to_arena && stored == target && aligned;
    if (to_arena) {
      void* block = arena->Take(static_cast<size_t>(v->NumElements()) * at::elementSize(target));
      out = at::from_blob(block, v->shape, [arena](void*) {}, at::TensorOptions().dtype(target));
      out.copy_(aligned ? view : view.clone());
    } else if (in_place) {
      out = view;
      mapped.push_back(v);
    } else {
      out = aligned ? view.to(target) : view.clone().to(target);
    }
    if (!in_place) {
      // A copy is what we keep; release the file pages.
      const uintptr_t page = 4096;
      uintptr_t begin = (reinterpret_cast<uintptr_t>(v->data) + page - 1) & ~(page - 1);
      uintptr_t end = (reinterpret_cast<uintptr_t>(v->data) + v->nbytes) & ~(page - 1);
      if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
    }
    num_parameters_ += v->NumElements();
    loaded_bytes += v->nbytes;
    ++loaded_tensors;
    if (options.log_progress && loaded_bytes >= next_report) {
      MAGMA_LOG_INFO("loading {}: {}/{} tensors, {:.1f}/{:.1f} GB", name_, loaded_tensors, expected.size(),
                     loaded_bytes / 1e9, total_bytes / 1e9);
      next_report += int64_t{1} << 30;
    }
    return out;
  };

  Weights& w = *w_;
  w.stem_w = get(absl::StrCat(kTrunk, "stem.0.weight"));
  w.stem_b = get(absl::StrCat(kTrunk, "stem.0.bias"));
  w.stem_norm_w = get(absl::StrCat(kTrunk, "stem.1.weight"));
  w.stem_norm_b = get(absl::StrCat(kTrunk, "stem.1.bias"));
  for (size_t s = 0; s < vision_depths_.size(); ++s) {
    Weights::Stage stage;
    const std::string p = absl::StrCat(kTrunk, "stages.", s, ".");
    if (s > 0) {
      stage.downsample = true;
      stage.ds_norm_w = get(p + "downsample.0.weight");
      stage.ds_norm_b = get(p + "downsample.0.bias");
      stage.ds_conv_w = get(p + "downsample.1.weight");
      stage.ds_conv_b = get(p + "downsample.1.bias");
    }
    for (int64_t j = 0; j < vision_depths_[s]; ++j) {
      const std::string b = absl::StrCat(p, "blocks.", j, ".");
      stage.blocks.push_back({get(b + "conv_dw.weight"), get(b + "conv_dw.bias"), get(b + "norm.weight"),
                              get(b + "norm.bias"), get(b + "mlp.fc1.weight"), get(b + "mlp.fc1.bias"),
                              get(b + "mlp.fc2.weight"), get(b + "mlp.fc2.bias"), get(b + "gamma")});
    }
    w.stages.push_back(std::move(stage));
  }
  w.proj0_w = get("multi_modal_projector.proj.0.weight");
  w.proj0_b = get("multi_modal_projector.proj.0.bias");
  w.proj2_w = get("multi_modal_projector.proj.2.weight");
  w.proj2_b = get("multi_modal_projector.proj.2.bias");
  w.row_sep = get("multi_modal_projector.row_seperator").reshape({h});
  w.embed = get(absl::StrCat(kLm, "embed_tokens.weight"));
  w.final_norm = get(absl::StrCat(kLm, "norm.weight"));
  w.lm_head = get("language_model.lm_head.weight");
  for (int64_t i = 0; i < t.num_layers; ++i) {
    const std::string p = absl::StrCat(kLm, "layers.", i, ".");
    w.layers.push_back({get(p + "self_attn.q_proj.weight"), get(p + "self_attn.k_proj.weight"),
                        get(p + "self_attn.v_proj.weight"), get(p + "self_attn.o_proj.weight"),
                        get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight"),
                        get(p + "mlp.down_proj.weight"), get(p + "input_layernorm.weight"),
                        get(p + "post_attention_layernorm.weight")});
  }

  if (options.prefault) {
    // Touch one byte per page of every weight used in place from the mapping.
    const absl::Time t0 = absl::Now();
    const std::vector<const TensorView*>& views = mapped;
    int64_t mapped_bytes = 0;
    for (const auto* v : views) mapped_bytes += v->nbytes;
    std::atomic<int64_t> sum{0};
    at::parallel_for(0, static_cast<int64_t>(views.size()), 1, [&](int64_t b, int64_t e) {
      int64_t local = 0;
      for (int64_t i = b; i < e; ++i) {
        const auto* p = static_cast<const volatile uint8_t*>(views[i]->data);
        madvise(const_cast<void*>(static_cast<const void*>(
                    reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(views[i]->data) & ~uintptr_t{4095}))),
                static_cast<size_t>(views[i]->nbytes) + 4096, MADV_WILLNEED);
        for (int64_t off = 0; off < views[i]->nbytes; off += 4096) local += p[off];
      }
      sum += local;
    });
    MAGMA_LOG_INFO("paged in {:.2f} GB of mapped weights in {:.1f} s", mapped_bytes / 1e9,
                   absl::ToDoubleSeconds(absl::Now() - t0));
  }

  // RoPE tables as the reference computes them: float32 inv_freq, angle =
  // position * inv_freq, duplicated halves.
  const int64_t hd = t.head_dim;
  at::Tensor inv_freq =
      1.0 / at::pow(t.rope_theta, at::arange(0, hd, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / hd);
  inv_freq = inv_freq.to(at::kFloat);
  at::Tensor pos = at::arange(t.max_position_embeddings, at::TensorOptions().dtype(at::kFloat));
  at::Tensor freqs = at::outer(pos, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  w.rope_cos = emb.cos();
  w.rope_sin = emb.sin();

  MAGMA_LOG_INFO("loaded {} ({} parameters, {:.2f} GB stored, decoder {}, vision {}) in {:.2f} s", name_,
                 num_parameters_, total_bytes / 1e9, dtype_ == at::kFloat ? "float32" : "bfloat16",
                 vision_dtype_ == at::kFloat ? "float32" : "bfloat16",
                 absl::ToDoubleSeconds(absl::Now() - start));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- parameters

void MagmaModel::ForEachParameter(const std::function<void(const std::string&, at::Tensor&)>& fn) {
  Weights& w = *w_;
  fn(absl::StrCat(kTrunk, "stem.0.weight"), w.stem_w);
  fn(absl::StrCat(kTrunk, "stem.0.bias"), w.stem_b);
  fn(absl::StrCat(kTrunk, "stem.1.weight"), w.stem_norm_w);
  fn(absl::StrCat(kTrunk, "stem.1.bias"), w.stem_norm_b);
  for (size_t s = 0; s < w.stages.size(); ++s) {
    auto& st = w.stages[s];
    const std::string p = absl::StrCat(kTrunk, "stages.", s, ".");
    if (st.downsample) {
      fn(p + "downsample.0.weight", st.ds_norm_w);
      fn(p + "downsample.0.bias", st.ds_norm_b);
      fn(p + "downsample.1.weight", st.ds_conv_w);
      fn(p + "downsample.1.bias", st.ds_conv_b);
    }
    for (size_t j = 0; j < st.blocks.size(); ++j) {
      auto& b = st.blocks[j];
      const std::string q = absl::StrCat(p, "blocks.", j, ".");
      fn(q + "conv_dw.weight", b.dw_w);
      fn(q + "conv_dw.bias", b.dw_b);
      fn(q + "norm.weight", b.norm_w);
      fn(q + "norm.bias", b.norm_b);
      fn(q + "mlp.fc1.weight", b.fc1_w);
      fn(q + "mlp.fc1.bias", b.fc1_b);
      fn(q + "mlp.fc2.weight", b.fc2_w);
      fn(q + "mlp.fc2.bias", b.fc2_b);
      fn(q + "gamma", b.gamma);
    }
  }
  fn("multi_modal_projector.proj.0.weight", w.proj0_w);
  fn("multi_modal_projector.proj.0.bias", w.proj0_b);
  fn("multi_modal_projector.proj.2.weight", w.proj2_w);
  fn("multi_modal_projector.proj.2.bias", w.proj2_b);
  fn("multi_modal_projector.row_seperator", w.row_sep);
  fn(absl::StrCat(kLm, "embed_tokens.weight"), w.embed);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    auto& L = w.layers[i];
    const std::string p = absl::StrCat(kLm, "layers.", i, ".");
    fn(p + "self_attn.q_proj.weight", L.q);
    fn(p + "self_attn.k_proj.weight", L.k);
    fn(p + "self_attn.v_proj.weight", L.v);
    fn(p + "self_attn.o_proj.weight", L.o);
    fn(p + "mlp.gate_proj.weight", L.gate);
    fn(p + "mlp.up_proj.weight", L.up);
    fn(p + "mlp.down_proj.weight", L.down);
    fn(p + "input_layernorm.weight", L.in_norm);
    fn(p + "post_attention_layernorm.weight", L.post_norm);
  }
  fn(absl::StrCat(kLm, "norm.weight"), w.final_norm);
  fn("language_model.lm_head.weight", w.lm_head);
}

absl::StatusOr<std::vector<at::Tensor>> MagmaModel::MakeTrainable() {
  if (dtype_ != at::kFloat || vision_dtype_ != at::kFloat) {
    return absl::FailedPreconditionError("training needs a model loaded in float32");
  }
  std::vector<at::Tensor> params;
  ForEachParameter([&params](const std::string&, at::Tensor& t) {
    // Own, writable float32 copies (the loaded ones may be views of the mapping).
    t = t.detach().to(at::kFloat).clone().set_requires_grad(true);
    params.push_back(t);
  });
  training_ = true;
  return params;
}

absl::Status MagmaModel::SaveWeights(const std::string& path) {
  std::vector<at::Tensor> keep;  // contiguous float32 copies alive until written
  std::vector<TensorView> views;
  absl::Status status;
  ForEachParameter([&](const std::string& name, at::Tensor& t) {
    at::Tensor c = t.detach().to(at::kFloat).contiguous();
    std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
    if (const TensorView* stored = checkpoint_->Find(name)) shape = stored->shape;  // e.g. [1, 1, h] row separator
    keep.push_back(c);
    TensorView v;
    v.name = name;
    v.dtype = StDType::kF32;
    v.shape = shape;
    v.data = c.data_ptr();
    v.nbytes = c.numel() * 4;
    views.push_back(v);
  });
  return WriteSafetensors(path, views);
}

// ---------------------------------------------------------------- vision

int64_t LayerIndex(int layer, int64_t layers) {
  const int64_t index = layer < 0 ? layers + layer : layer;
  return index >= 0 && index < layers ? index : -1;
}

namespace {

// captured[i], or an undefined tensor when i is out of range.
const at::Tensor& CapturedAt(const std::vector<at::Tensor>& captured, int64_t i) {
  static const at::Tensor kNone;
  return i >= 0 && i < static_cast<int64_t>(captured.size()) ? captured[i] : kNone;
}

}  // namespace

const at::Tensor& MagmaModel::captured_attention(int layer) const {
  return CapturedAt(captured_attention_, LayerIndex(layer, static_cast<int64_t>(w_->layers.size())));
}

const at::Tensor& MagmaModel::captured_head_outputs(int layer) const {
  return CapturedAt(captured_head_outputs_, LayerIndex(layer, static_cast<int64_t>(w_->layers.size())));
}

int64_t MagmaModel::ImageTokenCount(int grid_rows, int grid_cols) const {
  const int64_t side = config_.preprocess.base_img_size / 32;
  return grid_rows * side * (grid_cols * side + 1);
}

namespace {

// Mixed precision: float32 weights and activations, bfloat16 products
// (oneDNN, float32 accumulation); gradients flow back through the casts.
at::Tensor Bf16Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor y = at::linear(x.to(at::kBFloat16), w.to(at::kBFloat16)).to(at::kFloat);
  return b.defined() ? y + b : y;
}

}  // namespace

at::Tensor MagmaModel::Dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  if (training_ && bf16_training_matmuls_) return Bf16Linear(x, w, b);
  return Linear(x, w, b);
}

at::Tensor MagmaModel::VisionDense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const {
  if (training_ && bf16_vision_training_matmuls_) return Bf16Linear(x, w, b);
  return Linear(x, w, b);
}

bool MagmaModel::PointwiseAsConvolutions(const at::Tensor& w) const {
  return w.scalar_type() == at::kFloat && !(training_ && bf16_vision_training_matmuls_);
}

at::Tensor MagmaModel::Product(const at::Tensor& a, const at::Tensor& b) const {
  if (training_ && bf16_training_matmuls_) return at::matmul(a.to(at::kBFloat16), b.to(at::kBFloat16)).to(at::kFloat);
  return at::matmul(a, b);
}

at::Tensor MagmaModel::Tower(const at::Tensor& input) const {
  const Weights& w = *w_;
  // Channels-last storage: the convolutions keep it, so that the blocks'
  // channel-wise layer norms and linears read their [N, H, W, C] views
  // without a copy.
  at::Tensor x = Conv2d(input.contiguous(at::MemoryFormat::ChannelsLast), w.stem_w, w.stem_b,
                        /*stride=*/vision_patch_, /*padding=*/0, /*groups=*/1);
  x = LayerNorm2d(x, w.stem_norm_w, w.stem_norm_b, kVisionEps);
  for (const auto& stage : w.stages) {
    if (stage.downsample) {
      x = LayerNorm2d(x, stage.ds_norm_w, stage.ds_norm_b, kVisionEps);
      x = Conv2d(x, stage.ds_conv_w, stage.ds_conv_b, /*stride=*/2, /*padding=*/0, /*groups=*/1);
    }
    for (const auto& b : stage.blocks) {
      const int64_t c = x.size(1);
      // While training, a depthwise convolution whose weight gradient is
      // computed by our own kernel (oneDNN's is the slowest step here).
      const bool learning = b.dw_w.scalar_type() == at::kFloat && b.dw_w.requires_grad() && at::GradMode::is_enabled();
      at::Tensor y = learning ? DepthwiseConv2d(x, b.dw_w, b.dw_b, /*padding=*/3)
                              : Conv2d(x, b.dw_w, b.dw_b, /*stride=*/1, /*padding=*/3, /*groups=*/c);
      y = y.permute({0, 2, 3, 1});
      y = at::layer_norm(y, {c}, b.norm_w, b.norm_b, kVisionEps);
      if (PointwiseAsConvolutions(b.fc1_w)) {
        // The block's linears as 1x1 convolutions of the channels-last map:
        // oneDNN runs them, forward and backward, several times faster than
        // a matrix product over 16-64 channels. GELU reads the [N, H, W, C]
        // view: ATen's kernel is ~4x slower on the same memory seen as a
        // channels-last [N, C, H, W] tensor.
        y = at::conv2d(y.permute({0, 3, 1, 2}), b.fc1_w.reshape({-1, c, 1, 1}), b.fc1_b);
        y = at::gelu(y.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
        y = at::conv2d(y, b.fc2_w.reshape({c, -1, 1, 1}), b.fc2_b);
      } else {
        y = VisionDense(y, b.fc1_w, b.fc1_b);
        y = at::gelu(y);
        y = VisionDense(y, b.fc2_w, b.fc2_b);
        y = y.permute({0, 3, 1, 2});
      }
      x = y.mul(b.gamma.reshape({1, -1, 1, 1})) + x;
    }
  }
  return x;
}

at::Tensor MagmaModel::Project(const at::Tensor& nhwc) const {
  const Weights& w = *w_;
  return VisionDense(at::gelu(VisionDense(nhwc, w.proj0_w, w.proj0_b)), w.proj2_w, w.proj2_b);
}

absl::StatusOr<at::Tensor> MagmaModel::VisionFeatures(const at::Tensor& crops) const {
  if (crops.dim() != 4 || crops.size(1) != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("VisionFeatures: crops must be [N, 3, H, W], got ", crops.dim(), " dimensions",
                     crops.dim() >= 2 ? absl::StrCat(" with ", crops.size(1), " channels") : ""));
  }
  return Guarded("vision tower", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    return Tower(crops.to(at::kFloat)).contiguous();
  });
}

absl::StatusOr<at::Tensor> MagmaModel::EncodeImage(const at::Tensor& crops, int rows, int cols) const {
  const int64_t s = config_.preprocess.base_img_size;
  if (crops.dim() != 4 || crops.size(0) != int64_t{rows} * cols || crops.size(1) != 3 || crops.size(2) != s ||
      crops.size(3) != s) {
    return absl::InvalidArgumentError(absl::StrCat("EncodeImage: crops must be [", rows * cols, ", 3, ", s, ", ",
                                                   s, "] for a ", rows, "x", cols, " grid"));
  }
  return Guarded("encode image", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    const int64_t hsz = hidden_size();
    at::Tensor grid;  // [rows*h, cols*w, hidden]
    if (config_.vision.anyres_strategy == "global") {
      // Stitch the crops back into one image and run the tower once.
      at::Tensor image = crops.view({rows, cols, 3, s, s}).permute({2, 0, 3, 1, 4}).reshape({1, 3, rows * s, cols * s});
      at::Tensor f = Tower(image.to(at::kFloat));  // [1, C, rows*h, cols*w]
      grid = Project(f.permute({0, 2, 3, 1}))[0];
    } else {
      at::Tensor f = Tower(crops.to(at::kFloat));  // [N, C, h, w]
      const int64_t fh = f.size(2), fw = f.size(3);
      at::Tensor p = Project(f.permute({0, 2, 3, 1}));  // [N, h, w, hidden]
      grid = p.view({rows, cols, fh, fw, hsz}).permute({0, 2, 1, 3, 4}).reshape({rows * fh, cols * fw, hsz});
    }
    at::Tensor sep = w_->row_sep.view({1, 1, hsz}).expand({grid.size(0), 1, hsz});
    return at::cat({grid, sep}, 1).reshape({-1, hsz}).contiguous();
  });
}

absl::StatusOr<std::vector<at::Tensor>> MagmaModel::EncodeImages(const std::vector<at::Tensor>& crops,
                                                                const std::vector<std::pair<int, int>>& grids,
                                                                at::Tensor* tower_features) const {
  if (crops.size() != grids.size()) return absl::InvalidArgumentError("EncodeImages: one grid per image");
  std::vector<at::Tensor> out;
  if (tower_features != nullptr && config_.vision.anyres_strategy == "global") {
    return absl::InvalidArgumentError("EncodeImages: tower features are per crop (\"crop\" strategy only)");
  }
  if (tower_features == nullptr && (config_.vision.anyres_strategy == "global" || crops.size() < 2)) {
    for (size_t i = 0; i < crops.size(); ++i) {
      auto e = EncodeImage(crops[i], grids[i].first, grids[i].second);
      if (!e.ok()) return e.status();
      out.push_back(*std::move(e));
    }
    return out;
  }
  const int64_t s = config_.preprocess.base_img_size;
  for (size_t i = 0; i < crops.size(); ++i) {
    const auto [rows, cols] = grids[i];
    if (crops[i].dim() != 4 || crops[i].size(0) != int64_t{rows} * cols || crops[i].size(1) != 3 ||
        crops[i].size(2) != s || crops[i].size(3) != s) {
      return absl::InvalidArgumentError(absl::StrCat("EncodeImages: image ", i, " crops must be [", rows * cols,
                                                     ", 3, ", s, ", ", s, "]"));
    }
  }
  return Guarded("encode images", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    const int64_t hsz = hidden_size();
    at::Tensor f = Tower(at::cat(crops, 0).to(at::kFloat));  // all crops in one pass
    if (tower_features != nullptr) *tower_features = f;
    const int64_t fh = f.size(2), fw = f.size(3);
    at::Tensor p = Project(f.permute({0, 2, 3, 1}));  // [N, h, w, hidden]
    std::vector<at::Tensor> images;
    int64_t first = 0;
    for (const auto& [rows, cols] : grids) {
      at::Tensor grid = p.narrow(0, first, int64_t{rows} * cols)
                            .reshape({rows, cols, fh, fw, hsz})
                            .permute({0, 2, 1, 3, 4})
                            .reshape({rows * fh, cols * fw, hsz});
      first += int64_t{rows} * cols;
      at::Tensor sep = w_->row_sep.view({1, 1, hsz}).expand({grid.size(0), 1, hsz});
      images.push_back(at::cat({grid, sep}, 1).reshape({-1, hsz}));
    }
    return images;
  });
}

absl::StatusOr<at::Tensor> MagmaModel::EmbedPrompt(const std::vector<int64_t>& ids,
                                                   const std::vector<at::Tensor>& images) const {
  size_t n_image_tokens = 0;
  for (int64_t id : ids) {
    if (id == config_.image_token_index) {
      ++n_image_tokens;
    } else if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ",
                                                     vocab_size_, ")"));
    }
  }
  if (n_image_tokens != images.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", n_image_tokens, " image tokens but ",
                                                   images.size(), " images were given"));
  }
  for (const auto& img : images) {
    if (img.dim() != 2 || img.size(1) != hidden_size()) {
      return absl::InvalidArgumentError("image features must be [tokens, hidden]");
    }
  }
  return Guarded("embed prompt", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    std::vector<at::Tensor> parts;
    std::vector<int64_t> run;
    size_t next_image = 0;
    auto flush = [&] {
      if (run.empty()) return;
      at::Tensor idx = at::tensor(run, at::TensorOptions().dtype(at::kLong));
      parts.push_back(w_->embed.index_select(0, idx).to(at::kFloat));
      run.clear();
    };
    for (int64_t id : ids) {
      if (id == config_.image_token_index) {
        flush();
        parts.push_back(images[next_image++].to(at::kFloat));
      } else {
        run.push_back(id);
      }
    }
    flush();
    return at::cat(parts, 0);
  });
}

// ---------------------------------------------------------------- decoder

at::Tensor MagmaModel::RunDecoder(at::Tensor x, const at::Tensor& positions, KvCache* cache,
                                  const std::vector<int>& slots, bool prefill) const {
  const TextConfig& t = config_.text;
  const Weights& w = *w_;
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t nh = t.num_heads, nkv = t.num_kv_heads, hd = t.head_dim, g = nh / nkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  at::Tensor flat_pos = positions.reshape({-1});
  at::Tensor cos = w.rope_cos.index_select(0, flat_pos).view({B, T, 1, hd});
  at::Tensor sin = w.rope_sin.index_select(0, flat_pos).view({B, T, 1, hd});
  const int64_t kv_len = positions.max().item<int64_t>() + 1;  // keys to attend over
  const std::vector<int64_t> slot_list(slots.begin(), slots.end());
  at::Tensor slot_idx = at::tensor(slot_list, at::kLong);
  std::vector<int64_t> lengths;  // decode: positions each sequence attends to
  at::Tensor bias;               // prefill: causal mask as an additive bias
  if (prefill) {
    // mask[b, i, j] = key j is visible to query i of sequence b.
    at::Tensor key_pos = at::arange(kv_len, at::kLong).view({1, 1, kv_len});
    at::Tensor visible = key_pos <= positions.view({B, T, 1});
    bias = at::zeros({B, 1, 1, T, kv_len}, at::kFloat)
               .masked_fill_(visible.logical_not().view({B, 1, 1, T, kv_len}),
                             -std::numeric_limits<float>::infinity());
  } else {
    for (int64_t b = 0; b < B; ++b) lengths.push_back(cache->lengths_[slots[b]] + 1);
  }

  for (size_t li = 0; li < w.layers.size(); ++li) {
    const auto& L = w.layers[li];
    at::Tensor hs = RmsNorm(x, L.in_norm, t.rms_norm_eps);
    at::Tensor q = Dense(hs, L.q).view({B, T, nh, hd});
    at::Tensor k = Dense(hs, L.k).view({B, T, nkv, hd});
    at::Tensor v = Dense(hs, L.v).view({B, T, nkv, hd});
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;

    at::Tensor attn;  // [B, T, nh * hd]
    if (prefill) {
      at::Tensor keys, values;  // [1 or B, nkv, kv_len, hd]
      if (cache == nullptr) {
        // Batched forward without a cache: every sequence starts at position 0.
        keys = k.transpose(1, 2);
        values = v.transpose(1, 2);
      } else {
        const int slot = slots[0];
        const int64_t p0 = cache->lengths_[slot];
        at::Tensor& ck = cache->k_[li];
        at::Tensor& cv = cache->v_[li];
        ck[slot].narrow(1, p0, T).copy_(k[0].transpose(0, 1));  // copy_ converts to the cache dtype
        cv[slot].narrow(1, p0, T).copy_(v[0].transpose(0, 1));
        keys = ck[slot].narrow(1, 0, kv_len).unsqueeze(0).to(at::kFloat);
        values = cv[slot].narrow(1, 0, kv_len).unsqueeze(0).to(at::kFloat);
      }
      // Grouped-query attention without repeating keys: query head h reads KV
      // head h / g.
      // The g query heads of a KV head are stacked along the rows.
      at::Tensor qg = q.permute({0, 2, 1, 3}).reshape({B, nkv, g * T, hd});
      at::Tensor scores = Product(qg, keys.expand({B, nkv, kv_len, hd}).transpose(-1, -2)) * scale;
      scores = scores.view({B, nkv, g, T, kv_len});  // [B, nkv, g, T, kv]
      at::Tensor probs = at::softmax(scores + bias, -1);
      attn = Product(probs.view({B, nkv, g * T, kv_len}), values.expand({B, nkv, kv_len, hd}));  // [B, nkv, g*T, hd]
      attn = attn.reshape({B, nh, T, hd});
      if (cache == nullptr && !capture_layers_.empty()) {
        captured_attention_.resize(w.layers.size());
        captured_head_outputs_.resize(w.layers.size());
        const bool keep = std::any_of(capture_layers_.begin(), capture_layers_.end(), [&](int layer) {
          return LayerIndex(layer, static_cast<int64_t>(w.layers.size())) == static_cast<int64_t>(li);
        });
        // Query head h = KV head h / g, row h % g.
        captured_attention_[li] = keep ? probs.view({B, nh, T, kv_len}) : at::Tensor();
        captured_head_outputs_[li] = keep ? attn : at::Tensor();
      }
      attn = attn.permute({0, 2, 1, 3}).reshape({B, T, nh * hd});
    } else {
      at::Tensor& ck = cache->k_[li];
      at::Tensor& cv = cache->v_[li];
      at::Tensor pos_idx = positions.view({B});
      ck.index_put_({slot_idx, at::indexing::Slice(), pos_idx}, k.view({B, nkv, hd}).to(ck.scalar_type()));
      cv.index_put_({slot_idx, at::indexing::Slice(), pos_idx}, v.view({B, nkv, hd}).to(cv.scalar_type()));
      attn = DecodeAttention(q.view({B, nh, hd}), ck, cv, slot_list, lengths, scale).view({B, 1, nh * hd});
    }
    x = x + Dense(attn, L.o);

    hs = RmsNorm(x, L.post_norm, t.rms_norm_eps);
    at::Tensor mlp = at::silu(Dense(hs, L.gate)) * Dense(hs, L.up);
    x = x + Dense(mlp, L.down);
  }
  if (cache == nullptr) {
  } else if (prefill) {
    cache->lengths_[slots[0]] += static_cast<int>(T);
  } else {
    for (int s : slots) cache->lengths_[s] += 1;
  }
  return RmsNorm(x, w.final_norm, t.rms_norm_eps);
}

namespace {

inline uint16_t ToBf16Bits(float f) { return c10::detail::round_to_nearest_even(f); }

// out[b] = bfloat16(w * x[b] / rms(x[b])), the reference's RMSNorm followed by
// the cast a bfloat16 product applies to its input.
void RmsNormToBf16(const float* x, int64_t B, int64_t n, const float* w, double eps, uint16_t* out) {
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = x + b * n;
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += xr[i] * xr[i];
    const float r = 1.0f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
    for (int64_t i = 0; i < n; ++i) out[b * n + i] = ToBf16Bits(w[i] * (xr[i] * r));
  }
}

// Rotary embedding in place on `heads` rows of head_dim d: the reference's
// x * cos + rotate_half(x) * sin with cos/sin rows of one position.
void RopeInPlace(float* x, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* r = x + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float a = r[i], b = r[i + half];
      r[i] = a * cos[i] - b * sin[i];
      r[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

}  // namespace

at::Tensor MagmaModel::DecodeLayersBf16(at::Tensor x, const std::vector<int64_t>& pos, KvCache* cache,
                                        const std::vector<int>& slots) const {
  // The same arithmetic as RunDecoder's decode branch (float32 activations,
  // bfloat16 products accumulated in float32) without its ~45 tensor
  // operations per layer: RMSNorm straight into bfloat16, q/k/v and gate/up
  // each in one weight pass, RoPE and the cache write in place, and the
  // output and down projections accumulated onto the residual stream.
  const TextConfig& t = config_.text;
  const Weights& w = *w_;
  const int64_t B = x.size(0), h = t.hidden_size, nh = t.num_heads, nkv = t.num_kv_heads, hd = t.head_dim;
  const int64_t qd = nh * hd, kvd = nkv * hd, inter = t.intermediate_size, cap = cache->capacity();
  x = x.to(at::kFloat).contiguous();  // the residual stream, updated in place
  float* xs = x.data_ptr<float>();
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor q = at::empty({B, nh, hd}, f32), k = at::empty({B, kvd}, f32), v = at::empty({B, kvd}, f32);
  at::Tensor gate = at::empty({B, inter}, f32), up = at::empty({B, inter}, f32);
  std::vector<uint16_t> xb(static_cast<size_t>(B * std::max({h, qd, inter})));
  std::vector<int64_t> lengths, slot_list(slots.begin(), slots.end());
  for (int64_t b = 0; b < B; ++b) lengths.push_back(pos[b] + 1);
  const float* cos = w.rope_cos.data_ptr<float>();
  const float* sin = w.rope_sin.data_ptr<float>();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  for (size_t li = 0; li < w.layers.size(); ++li) {
    const auto& L = w.layers[li];
    RmsNormToBf16(xs, B, h, L.in_norm.data_ptr<float>(), t.rms_norm_eps, xb.data());
    GemvBf16(xb.data(), B, h,
             {{&L.q, q.data_ptr<float>(), false}, {&L.k, k.data_ptr<float>(), false}, {&L.v, v.data_ptr<float>(), false}});
    at::Tensor& ck = cache->k_[li];
    at::Tensor& cv = cache->v_[li];
    for (int64_t b = 0; b < B; ++b) {
      RopeInPlace(q.data_ptr<float>() + b * qd, nh, hd, cos + pos[b] * hd, sin + pos[b] * hd);
      float* kb = k.data_ptr<float>() + b * kvd;
      const float* vb = v.data_ptr<float>() + b * kvd;
      RopeInPlace(kb, nkv, hd, cos + pos[b] * hd, sin + pos[b] * hd);
      for (int64_t kh = 0; kh < nkv; ++kh) {
        const int64_t at_row = ((slots[b] * nkv + kh) * cap + pos[b]) * hd;
        if (ck.scalar_type() == at::kBFloat16) {
          auto* kd = reinterpret_cast<uint16_t*>(ck.data_ptr()) + at_row;
          auto* vd = reinterpret_cast<uint16_t*>(cv.data_ptr()) + at_row;
          for (int64_t i = 0; i < hd; ++i) {
            kd[i] = ToBf16Bits(kb[kh * hd + i]);
            vd[i] = ToBf16Bits(vb[kh * hd + i]);
          }
        } else {
          std::copy_n(kb + kh * hd, hd, ck.data_ptr<float>() + at_row);
          std::copy_n(vb + kh * hd, hd, cv.data_ptr<float>() + at_row);
        }
      }
    }
    at::Tensor attn = DecodeAttention(q, ck, cv, slot_list, lengths, scale);  // [B, nh, hd]
    const float* ap = attn.data_ptr<float>();
    for (int64_t i = 0; i < B * qd; ++i) xb[i] = ToBf16Bits(ap[i]);
    GemvBf16(xb.data(), B, qd, {{&L.o, xs, true}});

    RmsNormToBf16(xs, B, h, L.post_norm.data_ptr<float>(), t.rms_norm_eps, xb.data());
    GemvBf16(xb.data(), B, h, {{&L.gate, gate.data_ptr<float>(), false}, {&L.up, up.data_ptr<float>(), false}});
    const float* gp = gate.data_ptr<float>();
    const float* upp = up.data_ptr<float>();
    for (int64_t i = 0; i < B * inter; ++i) xb[i] = ToBf16Bits(gp[i] / (1.0f + std::exp(-gp[i])) * upp[i]);
    GemvBf16(xb.data(), B, inter, {{&L.down, xs, true}});
  }
  for (int s : slots) cache->lengths_[s] += 1;
  return RmsNorm(x, w.final_norm, t.rms_norm_eps);
}

at::Tensor MagmaModel::LmHead(const at::Tensor& hidden) const {
  // Logits always come out of a float32 accumulation: near-ties between the
  // top candidates must not be decided by bfloat16 output rounding.
  if (w_->lm_head.scalar_type() == at::kBFloat16) return LinearBf16(hidden, w_->lm_head, {});
  return at::linear(hidden, w_->lm_head);
}

absl::StatusOr<at::Tensor> MagmaModel::Prefill(const at::Tensor& embeds, KvCache* cache, int slot,
                                               bool all_logits) const {
  if (embeds.dim() != 2 || embeds.size(1) != hidden_size() || embeds.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("Prefill: embeds must be [L>0, ", hidden_size(), "]"));
  }
  if (slot < 0 || slot >= cache->num_slots()) return absl::InvalidArgumentError("Prefill: bad slot");
  const int64_t p0 = cache->length(slot), L = embeds.size(0);
  if (p0 + L > cache->capacity() || p0 + L > max_context_tokens()) {
    return absl::OutOfRangeError(absl::StrCat("sequence of ", p0 + L, " positions exceeds the context of ",
                                              std::min<int64_t>(cache->capacity(), max_context_tokens())));
  }
  return Guarded("prefill", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    at::Tensor positions = at::arange(p0, p0 + L, at::kLong).view({1, L});
    at::Tensor hidden = RunDecoder(embeds.to(at::kFloat).unsqueeze(0), positions, cache, {slot}, /*prefill=*/true)[0];
    if (!all_logits) hidden = hidden.narrow(0, L - 1, 1);
    at::Tensor logits = LmHead(hidden);
    return all_logits ? logits : logits[0];
  });
}

absl::StatusOr<at::Tensor> MagmaModel::Decode(const std::vector<int64_t>& tokens, const std::vector<int>& slots,
                                              KvCache* cache) const {
  if (tokens.size() != slots.size() || tokens.empty()) {
    return absl::InvalidArgumentError("Decode: need one token per slot");
  }
  std::vector<int64_t> pos;
  std::set<int> seen;
  for (size_t i = 0; i < slots.size(); ++i) {
    const int s = slots[i];
    if (s < 0 || s >= cache->num_slots() || !seen.insert(s).second) {
      return absl::InvalidArgumentError("Decode: slots must be distinct valid slots");
    }
    if (tokens[i] < 0 || tokens[i] >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: token id ", tokens[i], " outside the vocabulary"));
    }
    if (cache->length(s) + 1 > cache->capacity() || cache->length(s) + 1 > max_context_tokens()) {
      return absl::OutOfRangeError(absl::StrCat("Decode: slot ", s, " is full"));
    }
    pos.push_back(cache->length(s));
  }
  return Guarded("decode", [&] {
    c10::InferenceMode guard;
    const int64_t B = static_cast<int64_t>(tokens.size());
    at::Tensor ids = at::tensor(tokens, at::kLong);
    at::Tensor x = w_->embed.index_select(0, ids).to(at::kFloat).view({B, 1, hidden_size()});
    // Up to kStreamedRows sequences the step is a weight stream; larger
    // batches go through oneDNN's matrix products in RunDecoder.
    if (dtype_ == at::kBFloat16 && !training_ && B <= kStreamedRows) {
      return LmHead(DecodeLayersBf16(x.view({B, hidden_size()}), pos, cache, slots));
    }
    at::Tensor positions = at::tensor(pos, at::kLong).view({B, 1});
    at::Tensor hidden = RunDecoder(x, positions, cache, slots, /*prefill=*/false);
    return LmHead(hidden.view({B, hidden_size()}));
  });
}

absl::StatusOr<at::Tensor> MagmaModel::Forward(const at::Tensor& embeds) const {
  KvCache cache(config_.text, 1, static_cast<int>(embeds.size(0)), dtype_);
  return Prefill(embeds, &cache, cache.Allocate(), /*all_logits=*/true);
}

absl::Status MagmaModel::CheckBatch(const at::Tensor& embeds, const char* caller) const {
  if (embeds.dim() != 3 || embeds.size(2) != hidden_size() || embeds.size(0) == 0 || embeds.size(1) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(caller, ": embeds must be [B>0, T>0, ", hidden_size(), "]"));
  }
  if (embeds.size(1) > max_context_tokens()) {
    return absl::OutOfRangeError(absl::StrCat("sequence of ", embeds.size(1), " positions exceeds the context of ",
                                              max_context_tokens()));
  }
  return absl::OkStatus();
}

at::Tensor MagmaModel::BatchHidden(const at::Tensor& embeds) const {
  const int64_t B = embeds.size(0), T = embeds.size(1);
  at::Tensor positions = at::arange(0, T, at::kLong).view({1, T}).expand({B, T}).contiguous();
  at::Tensor hidden = RunDecoder(embeds.to(at::kFloat), positions, nullptr, {}, /*prefill=*/true);
  captured_final_hidden_ = capture_final_hidden_ ? hidden : at::Tensor();
  return hidden;
}

absl::StatusOr<at::Tensor> MagmaModel::ForwardBatch(const at::Tensor& embeds) const {
  if (auto s = CheckBatch(embeds, "ForwardBatch"); !s.ok()) return s;
  return Guarded("forward", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    return LmHead(BatchHidden(embeds));
  });
}

absl::StatusOr<at::Tensor> MagmaModel::ForwardBatchSpans(const at::Tensor& embeds,
                                                         const std::vector<std::pair<int64_t, int64_t>>& spans) const {
  if (auto s = CheckBatch(embeds, "ForwardBatchSpans"); !s.ok()) return s;
  const int64_t B = embeds.size(0), T = embeds.size(1);
  if (static_cast<int64_t>(spans.size()) != B) {
    return absl::InvalidArgumentError(
        absl::StrCat("ForwardBatchSpans: ", spans.size(), " spans for a batch of ", B, " sequences"));
  }
  std::vector<int64_t> rows;  // into the B * T positions
  for (int64_t b = 0; b < B; ++b) {
    const auto [first, count] = spans[b];
    if (first < 0 || first > T || count < 0 || count > T - first) {
      return absl::InvalidArgumentError(absl::StrCat("ForwardBatchSpans: span [", first, ", ", first + count,
                                                     ") of sequence ", b, " is outside its ", T, " positions"));
    }
    for (int64_t i = 0; i < count; ++i) rows.push_back(b * T + first + i);
  }
  return Guarded("forward", [&] {
    c10::InferenceMode guard(!training_);  // autograd on while training
    const at::Tensor hidden = BatchHidden(embeds).reshape({B * T, hidden_size()});
    return LmHead(hidden.index_select(0, at::tensor(rows, at::kLong)));
  });
}

absl::StatusOr<at::Tensor> MagmaModel::LastHiddenState(const at::Tensor& embeds) const {
  if (embeds.dim() != 2 || embeds.size(1) != hidden_size()) {
    return absl::InvalidArgumentError("LastHiddenState: embeds must be [L, hidden]");
  }
  return Guarded("forward", [&] {
    c10::InferenceMode guard;
    KvCache cache(config_.text, 1, static_cast<int>(embeds.size(0)), dtype_);
    const int64_t L = embeds.size(0);
    at::Tensor positions = at::arange(0, L, at::kLong).view({1, L});
    return RunDecoder(embeds.to(at::kFloat).unsqueeze(0), positions, &cache, {cache.Allocate()}, true)[0];
  });
}

}  // namespace magma::model
