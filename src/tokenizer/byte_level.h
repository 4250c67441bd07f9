// GPT-2's reversible byte <-> printable code point map used by byte-level
// BPE vocabularies (private to the component): printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 onwards in byte order.
#ifndef MAGMA_SRC_TOKENIZER_BYTE_LEVEL_H_
#define MAGMA_SRC_TOKENIZER_BYTE_LEVEL_H_

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "absl/strings/string_view.h"

namespace magma::tokenizer {

struct ByteLevelMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteLevelMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};

inline const ByteLevelMap& ByteLevel() {
  static const ByteLevelMap map;
  return map;
}

// Byte-level piece ("Ġthe") -> raw bytes (" the"); false if a code point is
// outside the byte-level alphabet.
inline bool PieceToBytes(const std::string& piece, std::string* out) {
  const auto& map = ByteLevel().cp_to_byte;
  out->clear();
  const auto* s = reinterpret_cast<const unsigned char*>(piece.data());
  size_t i = 0;
  while (i < piece.size()) {
    uint32_t cp;
    size_t len;
    if (s[i] < 0x80) {
      cp = s[i], len = 1;
    } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < piece.size()) {
      cp = ((s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F), len = 2;
    } else if ((s[i] & 0xF0) == 0xE0 && i + 2 < piece.size()) {
      cp = ((s[i] & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F), len = 3;
    } else {
      return false;
    }
    auto it = map.find(cp);
    if (it == map.end()) return false;
    out->push_back(static_cast<char>(it->second));
    i += len;
  }
  return true;
}

// Raw bytes -> byte-level piece.
inline std::string BytesToPiece(absl::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) {
    const uint32_t cp = ByteLevel().byte_to_cp[b];
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {  // all byte-level code points are below U+0800
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

}  // namespace magma::tokenizer

#endif  // MAGMA_SRC_TOKENIZER_BYTE_LEVEL_H_
