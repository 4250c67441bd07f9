// Memory-mapped reading of Hugging Face safetensors checkpoints, single file
// or sharded (model.safetensors.index.json). No libtorch here: tensors are
// views into the mapping; the model converts them.
#ifndef MAGMA_MODEL_SAFETENSORS_H_
#define MAGMA_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace magma::model {

enum class StDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element of `dtype`.
int64_t StDTypeSize(StDType dtype);
// The safetensors spelling, e.g. "BF16".
const char* StDTypeName(StDType dtype);

// One tensor inside a mapped file. `data` stays valid while the owning
// SafetensorsFile (or Checkpoint) lives.
struct TensorView {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t nbytes = 0;
  std::string file;  // path of the file holding it, for messages

  int64_t NumElements() const;
};

// One .safetensors file, mapped read-only. Thread-compatible; views are
// immutable.
class SafetensorsFile {
 public:
  // Maps and validates `path`: header length inside the file, JSON header,
  // known dtypes, offsets inside the data section, byte sizes matching shapes,
  // no overlapping tensors. Errors are INVALID_ARGUMENT naming the file and,
  // where one is at fault, the tensor; NOT_FOUND if the file cannot be opened.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  int64_t file_size() const { return size_; }
  // Metadata ("__metadata__") string pairs.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  int64_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: model.safetensors, or the shards
// named by model.safetensors.index.json.
class Checkpoint {
 public:
  // Errors: NOT_FOUND when neither file exists; INVALID_ARGUMENT for a bad
  // index (unparsable, a shard missing, a tensor the index names but its shard
  // lacks) or any malformed shard.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  // nullptr if absent.
  const TensorView* Find(const std::string& name) const;
  const std::map<std::string, const TensorView*>& tensors() const { return all_; }
  int64_t total_bytes() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> all_;
};

// Writes tensors to a .safetensors file (header padded to 8 bytes, tensors in
// the given order). Each view's data must hold nbytes bytes.
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Checkpoint averaging: writes to `output` a .safetensors file whose tensors
// are the element-wise means of the same tensors in `inputs` (e.g. the last
// checkpoints of one training run). Every input holds the same names, shapes
// and dtype, float32 only; each element is summed in double precision in the
// order of `inputs` and rounded to float32 once. The output keeps the first
// input's tensor order and metadata. Errors: INVALID_ARGUMENT for no inputs,
// another dtype, or inputs that differ (naming the file and tensor);
// NOT_FOUND for a missing input; write errors as WriteSafetensors.
absl::Status AverageSafetensors(const std::vector<std::string>& inputs, const std::string& output);

}  // namespace magma::model

#endif  // MAGMA_MODEL_SAFETENSORS_H_
