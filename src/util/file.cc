#include "magma/util/file.h"

#include <filesystem>
#include <fstream>
#include <ios>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace magma::util {

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("cannot read ", what, " '", path, "'"));
  }
  if (std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " '", path, "': it is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " '", path, "'"));
  try {
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::DataLossError(absl::StrCat("reading ", what, " '", path, "' failed"));
    return bytes;
  } catch (const std::ios_base::failure& e) {
    return absl::DataLossError(absl::StrCat("reading ", what, " '", path, "' failed: ", e.what()));
  }
}

}  // namespace magma::util
