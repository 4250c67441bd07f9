// The only translation unit that includes sentencepiece_processor.h (see
// spm_facade.h). Built as a shared library with no abseil in it.
#include "spm_facade.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

struct Handle {
  sentencepiece::SentencePieceProcessor sp;
  bool dummy_prefix = true;
};

Handle* H(void* h) { return static_cast<Handle*>(h); }

}  // namespace

extern "C" {

void* magma_spm_load(const char* path, char* err, int err_len) {
  auto h = std::make_unique<Handle>();
  const auto status = h->sp.Load(path);
  if (!status.ok()) {
    if (err != nullptr && err_len > 0) {
      std::strncpy(err, status.ToString().c_str(), static_cast<size_t>(err_len - 1));
      err[err_len - 1] = '\0';
    }
    return nullptr;
  }
  // The model proto's header is not installed; probe the normaliser instead:
  // with a dummy prefix, "a" encodes to pieces starting with U+2581.
  std::vector<std::string> pieces;
  h->dummy_prefix = h->sp.Encode("a", &pieces).ok() && !pieces.empty() && pieces[0].rfind("\xE2\x96\x81", 0) == 0;
  return h.release();
}

void magma_spm_free(void* handle) { delete H(handle); }

int magma_spm_encode(void* handle, const char* text, int len, int* ids, int cap) {
  std::vector<int> out;
  if (!H(handle)->sp.Encode(std::string(text, static_cast<size_t>(len)), &out).ok()) return -1;
  std::copy_n(out.begin(), std::min<size_t>(out.size(), static_cast<size_t>(cap)), ids);
  return static_cast<int>(out.size());
}

int magma_spm_vocab_size(void* handle) { return H(handle)->sp.GetPieceSize(); }

int magma_spm_piece(void* handle, int id, char* out, int cap) {
  const std::string& piece = H(handle)->sp.IdToPiece(id);
  std::memcpy(out, piece.data(), std::min<size_t>(piece.size(), static_cast<size_t>(cap)));
  return static_cast<int>(piece.size());
}

int magma_spm_piece_to_id(void* handle, const char* piece, int len) {
  const std::string p(piece, static_cast<size_t>(len));
  const int id = H(handle)->sp.PieceToId(p);
  // PieceToId answers unk for unknown pieces; report those as absent.
  if (id == H(handle)->sp.unk_id() && H(handle)->sp.IdToPiece(id) != p) return -1;
  return id;
}

int magma_spm_flags(void* handle, int id) {
  auto& sp = H(handle)->sp;
  return (sp.IsControl(id) ? 1 : 0) | (sp.IsUnknown(id) ? 2 : 0) | (sp.IsByte(id) ? 4 : 0) |
         (sp.IsUnused(id) ? 8 : 0);
}

int magma_spm_special(void* handle, int which) {
  auto& sp = H(handle)->sp;
  switch (which) {
    case 0: return sp.bos_id();
    case 1: return sp.eos_id();
    case 2: return sp.pad_id();
    case 3: return sp.unk_id();
    default: return -1;
  }
}

int magma_spm_add_dummy_prefix(void* handle) { return H(handle)->dummy_prefix ? 1 : 0; }

}  // extern "C"
