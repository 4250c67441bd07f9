// A scratch directory removed when the object dies.
#ifndef MAGMA_TESTING_TEMP_DIR_H_
#define MAGMA_TESTING_TEMP_DIR_H_

#include <string>

namespace magma::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path()/name
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes `bytes` to `path`, replacing it.
void WriteFile(const std::string& path, const std::string& bytes);

}  // namespace magma::testing

#endif  // MAGMA_TESTING_TEMP_DIR_H_
