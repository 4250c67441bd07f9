#include <string>
#include <utility>

#include "absl/strings/str_replace.h"

#include "magma/tokenizer/tokenizer.h"

namespace magma::tokenizer {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD

// Examines the UTF-8 sequence starting at s[0]. Returns its length when
// valid. Otherwise returns 0 and sets *bad to the length of the maximal
// invalid subpart (the lead byte plus the continuation bytes that could still
// have formed a character; WHATWG/Python replace it by ONE U+FFFD), and
// *incomplete when that subpart is cut off by the end of the input.
size_t SequenceLength(const unsigned char* s, size_t n, size_t* bad, bool* incomplete) {
  *incomplete = false;
  *bad = 1;
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlongs
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    if (i >= n) {
      *incomplete = true;
      *bad = i;
      return 0;
    }
    const unsigned char b = s[i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b & 0xC0) == 0x80;
    if (!ok) {
      *bad = i;
      return 0;
    }
  }
  return len;
}

// `bytes` as text, invalid sequences and a truncated last character as
// U+FFFD.
std::string LossyUtf8(absl::string_view bytes) {
  std::string out;
  if (TakeCompleteUtf8(bytes, &out) < bytes.size()) out.append(kReplacement);  // one truncated character
  return out;
}

}  // namespace

size_t TakeCompleteUtf8(absl::string_view bytes, std::string* out) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    bool incomplete = false;
    size_t bad = 0;
    const size_t len = SequenceLength(s + i, n - i, &bad, &incomplete);
    if (incomplete) break;  // wait for the rest of the character
    if (len == 0) {
      out->append(kReplacement);
      i += bad;
    } else {
      out->append(bytes.data() + i, len);
      i += len;
    }
  }
  return i;
}

bool IsValidUtf8(absl::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    bool incomplete = false;
    size_t bad = 0;
    const size_t len = SequenceLength(s + i, text.size() - i, &bad, &incomplete);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

IncrementalDecoder::IncrementalDecoder(const Tokenizer* tokenizer, bool skip_special,
                                       std::optional<bool> clean_up_spaces)
    : tokenizer_(tokenizer),
      skip_special_(skip_special),
      clean_up_(clean_up_spaces.value_or(tokenizer->clean_up_tokenization_spaces())) {}

namespace {

// Bytes of text before a cut that can take part in a clean-up match across
// it: a space, at most two more characters of the pattern, and the spaces
// between them that earlier replacements delete.
constexpr size_t kCleanUpReach = 16;

// True when a clean-up match could start before the end of `text` and go on
// into what follows. Every pattern starts with a space, and replacements
// only delete spaces, so such a match starts at a space of `text` whose
// remainder, without the later spaces the earlier replacements may delete,
// begins one of the patterns: " ", " '", " n", " n'", " 'v" or " 'r".
bool CleanUpMayCross(absl::string_view text) {
  static constexpr absl::string_view kOpen[] = {" ", " '", " n", " n'", " 'v", " 'r"};
  const size_t from = text.size() > kCleanUpReach ? text.size() - kCleanUpReach : 0;
  for (size_t s = text.find(' ', from); s != absl::string_view::npos; s = text.find(' ', s + 1)) {
    std::string rest = " ";
    for (char c : text.substr(s + 1)) {
      if (c != ' ') rest.push_back(c);
    }
    for (absl::string_view open : kOpen) {
      if (rest == open) return true;
    }
  }
  return false;
}

// The longest cut of `text` (which follows `before`) that the clean-up
// cannot reach across and that does not split a character.
size_t CleanCut(absl::string_view before, absl::string_view text) {
  size_t cut = text.size();
  while (cut > 0) {
    if (text[cut - 1] == ' ') {  // a text that ends with a space may go on " ."
      --cut;
      continue;
    }
    if (cut == text.size() || (static_cast<unsigned char>(text[cut]) & 0xC0) != 0x80) {
      std::string context;
      if (cut < kCleanUpReach) context = std::string(before);
      context.append(text.data() + (cut > kCleanUpReach ? cut - kCleanUpReach : 0), std::min(cut, kCleanUpReach));
      if (!CleanUpMayCross(context)) return cut;
    }
    --cut;
  }
  return 0;
}

}  // namespace

std::string CleanUpTokenizationSpaces(std::string text) {
  static constexpr std::pair<absl::string_view, absl::string_view> kSteps[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kSteps) absl::StrReplaceAll({{from, to}}, &text);
  return text;
}

std::string IncrementalDecoder::Push(int32_t id) {
  if (skip_special_ && tokenizer_->IsSpecial(id)) return "";
  pending_ += tokenizer_->TokenBytes(id, first_);
  first_ = false;
  std::string out;
  const size_t used = TakeCompleteUtf8(pending_, &out);
  pending_.erase(0, used);
  if (!clean_up_) return out;
  unclean_ += out;
  const size_t cut = CleanCut(given_tail_, unclean_);
  if (cut == 0) return "";
  given_tail_ += unclean_.substr(0, cut);
  if (given_tail_.size() > kCleanUpReach) given_tail_.erase(0, given_tail_.size() - kCleanUpReach);
  out = CleanUpTokenizationSpaces(unclean_.substr(0, cut));
  unclean_.erase(0, cut);
  return out;
}

std::string IncrementalDecoder::Finish() {
  std::string out = LossyUtf8(pending_);
  pending_.clear();
  if (!clean_up_) return out;
  out = CleanUpTokenizationSpaces(unclean_ + out);
  unclean_.clear();
  given_tail_.clear();
  return out;
}

std::string IncrementalDecoder::Held() const { return clean_up_ ? CleanUpTokenizationSpaces(unclean_) : ""; }

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text, bool parse_special) const {
  return EncodeSegments({Segment{std::string(text), parse_special}}, /*add_special_tokens=*/false);
}

std::string Tokenizer::TokenText(int32_t id) const { return LossyUtf8(TokenBytes(id, /*first=*/false)); }

std::string Tokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  IncrementalDecoder decoder(this, skip_special);
  std::string out;
  for (int32_t id : ids) out += decoder.Push(id);
  return out + decoder.Finish();
}

}  // namespace magma::tokenizer
