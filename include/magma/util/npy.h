// Minimal reader and writer of NumPy .npy files (format 1.0/2.0), for the
// dtypes the project exchanges with reference tools: little-endian float32
// ('<f4') and int64 ('<i8'), C order.
#ifndef MAGMA_UTIL_NPY_H_
#define MAGMA_UTIL_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace magma::npy {

enum class DType { kFloat32, kInt64 };

// A dense array: `shape` in elements, values in row-major order. Exactly one
// of `f32` / `i64` is filled, as `dtype` says.
struct Array {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;

  int64_t NumElements() const;
};

// Reads `path`. Errors: NOT_FOUND for a missing file, INVALID_ARGUMENT naming
// the file for a bad magic, header, dtype (only <f4, <i8), Fortran order or a
// data size that does not match the shape.
absl::StatusOr<Array> Read(const std::string& path);

// Writes `array` to `path` (format 1.0). The element vector must hold
// exactly NumElements() values.
absl::Status Write(const std::string& path, const Array& array);

// Convenience constructors.
Array FromFloat(std::vector<int64_t> shape, std::vector<float> values);
Array FromInt64(std::vector<int64_t> shape, std::vector<int64_t> values);

}  // namespace magma::npy

#endif  // MAGMA_UTIL_NPY_H_
