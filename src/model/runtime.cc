#include "magma/model/runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>

#include <ATen/Parallel.h>

namespace magma::model {

int ConfigureRuntime(int threads) {
  if (threads <= 0) threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (threads <= 0) threads = 1;
  at::set_num_threads(threads);
  // The largest value glibc accepts for the mmap threshold on 64-bit hosts is
  // 32 MiB; with a high trim threshold freed blocks stay mapped for reuse.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  return at::get_num_threads();
}

void UseHeapForLargeBlocks() { mallopt(M_MMAP_MAX, 0); }

std::string BlasBackend() {
  // Debian selects the BLAS through alternatives; report the library that the
  // dynamic linker actually resolved for libblas.so.3.
  std::string found = "unknown";
  dl_iterate_phdr(
      [](struct dl_phdr_info* info, size_t, void* data) {
        std::string name = info->dlpi_name ? info->dlpi_name : "";
        // Debian reaches the BLAS through alternatives symlinks.
        if (char* real = name.empty() ? nullptr : realpath(name.c_str(), nullptr)) {
          name = real;
          free(real);
        }
        auto* out = static_cast<std::string*>(data);
        if (name.find("openblas") != std::string::npos) {
          *out = name.find("openmp") != std::string::npos ? "openblas-openmp"
                 : name.find("pthread") != std::string::npos ? "openblas-pthread"
                                                              : "openblas";
        } else if (name.find("/blas/libblas") != std::string::npos && *out == "unknown") {
          *out = "reference-blas (slow: install libopenblas0-openmp)";
        } else if (name.find("libmkl") != std::string::npos) {
          *out = "mkl";
        } else if (name.find("blis") != std::string::npos) {
          *out = "blis";
        }
        return 0;
      },
      &found);
  return found;
}

}  // namespace magma::model
