// Process-wide numeric runtime settings for libtorch.
#ifndef MAGMA_MODEL_RUNTIME_H_
#define MAGMA_MODEL_RUNTIME_H_

#include <string>

namespace magma::model {

// Sets libtorch's intra-op thread count (0 = one per online core) and keeps
// large freed blocks inside the process (glibc otherwise unmaps them and every
// big temporary is page-faulted in again). Returns the thread count in effect.
// Call once at start-up, before any model work.
int ConfigureRuntime(int threads);

// For training: blocks above the largest mmap threshold glibc accepts
// (32 MiB) come from the heap too, instead of mappings of their own that free
// unmaps, so that a step's largest activations are not page-faulted in
// again on every step. glibc still maps a new region when the heap cannot
// grow. Not for servers: the heap only shrinks from its top, so the process
// keeps its high-water mark.
void UseHeapForLargeBlocks();

// Which BLAS library libtorch's fp32 matmul reaches, e.g. "openblas-openmp".
std::string BlasBackend();

}  // namespace magma::model

#endif  // MAGMA_MODEL_RUNTIME_H_
