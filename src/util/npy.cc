#include "magma/util/npy.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "magma/util/file.h"

namespace magma::npy {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

// Finds the value text of 'key' in the header dict, e.g. "'<f4'" for descr.
bool FindValue(const std::string& header, const std::string& key, std::string* value) {
  const std::string quoted = "'" + key + "'";
  size_t pos = header.find(quoted);
  if (pos == std::string::npos) return false;
  pos = header.find(':', pos + quoted.size());
  if (pos == std::string::npos) return false;
  ++pos;
  while (pos < header.size() && header[pos] == ' ') ++pos;
  size_t end;
  if (header[pos] == '(') {
    end = header.find(')', pos);
    if (end == std::string::npos) return false;
    ++end;
  } else {
    end = header.find_first_of(",}", pos);
    if (end == std::string::npos) return false;
  }
  *value = header.substr(pos, end - pos);
  return true;
}

absl::Status Bad(const std::string& path, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": not a supported .npy file: ", why));
}

}  // namespace

int64_t Array::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<Array> Read(const std::string& path) {
  auto read = util::ReadFile(path, "npy file");
  if (!read.ok()) return read.status();
  const std::string& bytes = *read;
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) return Bad(path, "bad magic");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(path, "truncated header");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    header_start = 12;
  } else {
    return Bad(path, absl::StrCat("unknown format version ", major));
  }
  if (header_start + header_len > bytes.size()) return Bad(path, "truncated header");
  const std::string header = bytes.substr(header_start, header_len);

  std::string descr, fortran, shape_text;
  if (!FindValue(header, "descr", &descr) || !FindValue(header, "fortran_order", &fortran) ||
      !FindValue(header, "shape", &shape_text)) {
    return Bad(path, "header lacks descr, fortran_order or shape");
  }
  Array out;
  size_t elem_size;
  if (descr == "'<f4'") {
    out.dtype = DType::kFloat32;
    elem_size = 4;
  } else if (descr == "'<i8'") {
    out.dtype = DType::kInt64;
    elem_size = 8;
  } else {
    return Bad(path, absl::StrCat("dtype ", descr, " (supported: '<f4', '<i8')"));
  }
  if (fortran != "False") return Bad(path, "Fortran order");
  absl::string_view inner = shape_text;
  inner = absl::StripPrefix(inner, "(");
  inner = absl::StripSuffix(inner, ")");
  for (absl::string_view part : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    int64_t dim;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &dim) || dim < 0) {
      return Bad(path, absl::StrCat("bad shape ", shape_text));
    }
    out.shape.push_back(dim);
  }
  const size_t data_start = header_start + header_len;
  const size_t expected = static_cast<size_t>(out.NumElements()) * elem_size;
  if (bytes.size() - data_start != expected) {
    return Bad(path, absl::StrCat("data has ", bytes.size() - data_start, " bytes, shape needs ",
                                  expected));
  }
  if (out.dtype == DType::kFloat32) {
    out.f32.resize(out.NumElements());
    std::memcpy(out.f32.data(), bytes.data() + data_start, expected);
  } else {
    out.i64.resize(out.NumElements());
    std::memcpy(out.i64.data(), bytes.data() + data_start, expected);
  }
  return out;
}

absl::Status Write(const std::string& path, const Array& array) {
  const bool is_f32 = array.dtype == DType::kFloat32;
  const size_t n = is_f32 ? array.f32.size() : array.i64.size();
  if (static_cast<int64_t>(n) != array.NumElements()) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy::Write: ", n, " values for shape of ", array.NumElements()));
  }
  std::string shape = absl::StrJoin(array.shape, ", ");
  if (array.shape.size() == 1) shape += ",";
  std::string header = absl::StrCat("{'descr': '", is_f32 ? "<f4" : "<i8",
                                    "', 'fortran_order': False, 'shape': (", shape, "), }");
  // Pad so that magic + version + len + header + '\n' is a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out.write(kMagic, 6);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  if (is_f32) {
    out.write(reinterpret_cast<const char*>(array.f32.data()), static_cast<std::streamsize>(n * 4));
  } else {
    out.write(reinterpret_cast<const char*>(array.i64.data()), static_cast<std::streamsize>(n * 8));
  }
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

Array FromFloat(std::vector<int64_t> shape, std::vector<float> values) {
  Array a;
  a.dtype = DType::kFloat32;
  a.shape = std::move(shape);
  a.f32 = std::move(values);
  return a;
}

Array FromInt64(std::vector<int64_t> shape, std::vector<int64_t> values) {
  Array a;
  a.dtype = DType::kInt64;
  a.shape = std::move(shape);
  a.i64 = std::move(values);
  return a;
}

}  // namespace magma::npy
