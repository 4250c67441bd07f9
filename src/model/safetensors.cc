#include "magma/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace magma::model {
namespace {

using nlohmann::json;

// A header larger than this is certainly corrupt (real ones are a few MB).
constexpr int64_t kMaxHeaderBytes = int64_t{100} << 20;

bool ParseDType(const std::string& s, StDType* out) {
  static const std::pair<const char*, StDType> kNames[] = {
      {"F64", StDType::kF64}, {"F32", StDType::kF32}, {"F16", StDType::kF16},
      {"BF16", StDType::kBF16}, {"I64", StDType::kI64}, {"I32", StDType::kI32},
      {"I16", StDType::kI16}, {"I8", StDType::kI8},   {"U8", StDType::kU8},
      {"BOOL", StDType::kBool}};
  for (const auto& [name, dtype] : kNames) {
    if (s == name) {
      *out = dtype;
      return true;
    }
  }
  return false;
}

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed safetensors file ", path, ": ", what));
}

}  // namespace

int64_t StDTypeSize(StDType dtype) {
  switch (dtype) {
    case StDType::kF64:
    case StDType::kI64:
      return 8;
    case StDType::kF32:
    case StDType::kI32:
      return 4;
    case StDType::kF16:
    case StDType::kBF16:
    case StDType::kI16:
      return 2;
    case StDType::kI8:
    case StDType::kU8:
    case StDType::kBool:
      return 1;
  }
  return 1;
}

const char* StDTypeName(StDType dtype) {
  switch (dtype) {
    case StDType::kF64: return "F64";
    case StDType::kF32: return "F32";
    case StDType::kF16: return "F16";
    case StDType::kBF16: return "BF16";
    case StDType::kI64: return "I64";
    case StDType::kI32: return "I32";
    case StDType::kI16: return "I16";
    case StDType::kI8: return "I8";
    case StDType::kU8: return "U8";
    case StDType::kBool: return "BOOL";
  }
  return "?";
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->size_ = st.st_size;
  if (file->size_ < 8) {
    ::close(fd);
    return Bad(path, absl::StrCat("file has ", file->size_, " bytes, less than the 8-byte header length"));
  }
  void* map = ::mmap(nullptr, static_cast<size_t>(file->size_), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot mmap ", path));
  file->map_ = map;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian on every supported host
  if (header_len > static_cast<uint64_t>(kMaxHeaderBytes) ||
      static_cast<int64_t>(header_len) > file->size_ - 8) {
    return Bad(path, absl::StrCat("header length ", header_len, " exceeds the file size ", file->size_));
  }
  const int64_t data_start = 8 + static_cast<int64_t>(header_len);
  const int64_t data_size = file->size_ - data_start;
  json header = json::parse(base + 8, base + data_start, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Bad(path, "header is not a JSON object");

  struct Range {
    int64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (entry.is_object()) {
        for (auto m = entry.begin(); m != entry.end(); ++m) {
          if (m.value().is_string()) file->metadata_[m.key()] = m.value().get<std::string>();
        }
      }
      continue;
    }
    auto bad_tensor = [&](const std::string& why) { return Bad(path, absl::StrCat("tensor '", name, "': ", why)); };
    if (!entry.is_object()) return bad_tensor("entry is not an object");
    const auto dt = entry.find("dtype");
    const auto sh = entry.find("shape");
    const auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return bad_tensor("missing dtype");
    if (sh == entry.end() || !sh->is_array()) return bad_tensor("missing shape");
    if (off == entry.end() || !off->is_array() || off->size() != 2) return bad_tensor("missing data_offsets");
    TensorView view;
    view.name = name;
    view.file = path;
    if (!ParseDType(dt->get<std::string>(), &view.dtype)) {
      return bad_tensor(absl::StrCat("unknown dtype '", dt->get<std::string>(), "'"));
    }
    int64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad_tensor("shape has a non-integer or negative dimension");
      view.shape.push_back(d.get<int64_t>());
      if (view.shape.back() != 0 && numel > (int64_t{1} << 50) / view.shape.back()) {
        return bad_tensor("shape is too large");
      }
      numel *= view.shape.back();
    }
    if (!(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      return bad_tensor("data_offsets are not non-negative integers");
    }
    // Compared unsigned: offsets past 2^63 must not wrap to negative numbers.
    const uint64_t ubegin = (*off)[0].get<uint64_t>(), uend = (*off)[1].get<uint64_t>();
    if (ubegin > uend || uend > static_cast<uint64_t>(data_size)) {
      return bad_tensor(absl::StrCat("data_offsets [", ubegin, ", ", uend, "] lie outside the data section of ",
                                     data_size, " bytes"));
    }
    const int64_t begin = static_cast<int64_t>(ubegin), end = static_cast<int64_t>(uend);
    view.nbytes = end - begin;
    if (view.nbytes != numel * StDTypeSize(view.dtype)) {
      return bad_tensor(absl::StrCat("holds ", view.nbytes, " bytes but shape [",
                                     absl::StrJoin(view.shape, ", "), "] of ", StDTypeName(view.dtype),
                                     " needs ", numel * StDTypeSize(view.dtype)));
    }
    view.data = base + data_start + begin;
    auto inserted = file->tensors_.emplace(name, std::move(view));
    ranges.push_back({begin, end, &inserted.first->first});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  // Each tensor against the one reaching furthest before it (an empty tensor
  // between two others must not hide their overlap); empty tensors occupy no
  // bytes and may share an offset.
  const Range* furthest = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (furthest != nullptr && r.begin < furthest->end) {
      return Bad(path, absl::StrCat("tensors '", *furthest->name, "' and '", *r.name, "' overlap"));
    }
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, static_cast<size_t>(size_));
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto ckpt = std::make_unique<Checkpoint>();
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    json index = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": not a JSON object with a \"weight_map\" object"));
    }
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path.string(), ": weight_map entry '", it.key(), "' is not a file name"));
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path.string(), ": shard name '", shard, "' must be a plain file name"));
      }
      by_file[shard].push_back(it.key());
    }
    for (const auto& [shard, names] : by_file) {
      auto file = SafetensorsFile::Open((fs::path(dir) / shard).string());
      if (!file.ok()) {
        if (absl::IsNotFound(file.status())) {
          return absl::InvalidArgumentError(absl::StrCat(index_path.string(), " names shard ", shard,
                                                         " which cannot be opened"));
        }
        return file.status();
      }
      for (const std::string& name : names) {
        if ((*file)->tensors().count(name) == 0) {
          return absl::InvalidArgumentError(absl::StrCat(index_path.string(), " places tensor '", name,
                                                         "' in ", shard, " but that file lacks it"));
        }
      }
      ckpt->files_.push_back(*std::move(file));
    }
  } else if (fs::exists(single_path, ec)) {
    auto file = SafetensorsFile::Open(single_path.string());
    if (!file.ok()) return file.status();
    ckpt->files_.push_back(*std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir));
  }
  for (const auto& file : ckpt->files_) {
    for (const auto& [name, view] : file->tensors()) {
      if (!ckpt->all_.emplace(name, &view).second) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in more than one shard (",
                                                       ckpt->all_[name]->file, ", ", file->path(), ")"));
      }
    }
  }
  return ckpt;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  auto it = all_.find(name);
  return it == all_.end() ? nullptr : it->second;
}

int64_t Checkpoint::total_bytes() const {
  int64_t total = 0;
  for (const auto& [name, view] : all_) total += view->nbytes;
  return total;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t offset = 0;
  for (const TensorView& t : tensors) {
    header[t.name] = {{"dtype", StDTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorView& t : tensors) {
    out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
  }
  if (!out) return absl::DataLossError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

absl::Status AverageSafetensors(const std::vector<std::string>& inputs, const std::string& output) {
  if (inputs.empty()) return absl::InvalidArgumentError("averaging needs at least one checkpoint file");
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  for (const std::string& path : inputs) {
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) return f.status();
    files.push_back(*std::move(f));
  }
  const auto& first = files[0]->tensors();
  for (const auto& f : files) {
    if (f->tensors().size() != first.size()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot average ", f->path(), " with ", files[0]->path(), ": ",
                                                     f->tensors().size(), " tensors against ", first.size()));
    }
    for (const auto& [name, view] : f->tensors()) {
      auto it = first.find(name);
      if (it == first.end()) {
        return absl::InvalidArgumentError(absl::StrCat("cannot average ", f->path(), " with ", files[0]->path(),
                                                       ": tensor ", name, " is not in both"));
      }
      if (view.dtype != StDType::kF32) {
        return absl::InvalidArgumentError(absl::StrCat("averaging takes float32 tensors only; ", name, " in ",
                                                       f->path(), " is ", StDTypeName(view.dtype)));
      }
      if (view.shape != it->second.shape) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot average ", f->path(), " with ", files[0]->path(), ": tensor ", name, " has shape [",
                         absl::StrJoin(view.shape, ","), "] against [", absl::StrJoin(it->second.shape, ","), "]"));
      }
    }
  }
  // The first file's order: its tensors sorted by where their data lies.
  std::vector<const TensorView*> order;
  for (const auto& [name, view] : first) order.push_back(&view);
  std::sort(order.begin(), order.end(), [](const TensorView* a, const TensorView* b) {
    return static_cast<const char*>(a->data) < static_cast<const char*>(b->data);
  });
  std::vector<std::vector<float>> means;
  std::vector<TensorView> views;
  means.reserve(order.size());
  std::vector<double> sum;
  for (const TensorView* t : order) {
    const int64_t n = t->NumElements();
    sum.assign(static_cast<size_t>(n), 0.0);
    for (const auto& f : files) {
      const auto* x = static_cast<const float*>(f->tensors().at(t->name).data);
      for (int64_t i = 0; i < n; ++i) sum[i] += x[i];
    }
    std::vector<float>& mean = means.emplace_back(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) mean[i] = static_cast<float>(sum[i] / static_cast<double>(files.size()));
    TensorView v = *t;
    v.data = mean.data();
    v.file = output;
    views.push_back(std::move(v));
  }
  return WriteSafetensors(output, views, files[0]->metadata());
}

}  // namespace magma::model
