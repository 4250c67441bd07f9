#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

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

// The clean-up's patterns (CleanUpTokenizationSpaces) all start with a
// space, and its replacements only delete spaces, so a pattern matches in
// the final text only where an original space is followed by the pattern's
// other characters, with the spaces between them deleted. Cut points are
// judged on that over-approximation, treating every later space as one
// that may be deleted, with two bounds that keep runs of spaces flowing:
// - each pass deletes at most the last space of a run (its match's leading
//   space) and, for " ' ", the first space after a quote, so a space with
//   more than kDeletableRun spaces after it never meets a pattern's
//   character;
// - " ' " keeps the space right after its quote (an earlier pass deletes
//   that space only where it is the run's only space, before . ? ! or ,,
//   and then " ' " cannot match).
constexpr absl::string_view kPatternTails[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
constexpr size_t kDeletableRun = 16;

// The longest cut of `text` that no clean-up match can cross, whatever
// text follows, and that does not split a character. A space at s blocks
// the cuts after it up to the end of the match it may start; a match the
// known text has not yet completed or ruled out blocks everything after s.
// Text before an earlier cut never matters: no match crosses that cut.
size_t CleanCut(absl::string_view text) {
  const size_t n = text.size();
  constexpr size_t kOpenEnded = std::numeric_limits<size_t>::max();
  // next[i]: the first position at or after i that is not a space (n if none).
  std::vector<size_t> next(n + 1, n);
  for (size_t i = n; i-- > 0;) next[i] = text[i] == ' ' ? next[i + 1] : i;
  // reach[p]: the furthest end of a match from a space before p.
  std::vector<size_t> reach(n + 1, 0);
  size_t furthest = 0;
  for (size_t s = 0; s < n; ++s) {
    reach[s] = furthest;
    if (text[s] != ' ' || next[s] - s - 1 > kDeletableRun) continue;
    for (absl::string_view tail : kPatternTails) {
      size_t at = s;  // the position of the pattern's last character matched so far
      bool open = false, differs = false;
      for (char c : tail) {
        at = next[at + 1];
        if (at == n) {
          open = true;
          break;
        }
        if (text[at] != c) {
          differs = true;
          break;
        }
      }
      if (differs) continue;
      size_t end = at;
      if (!open && tail == "'") {  // " ' " ends with the space after its quote
        if (at + 1 == n) {
          open = true;
        } else if (text[at + 1] != ' ') {
          continue;
        } else {
          end = at + 1;
        }
      }
      furthest = std::max(furthest, open ? kOpenEnded : end);
    }
  }
  reach[n] = furthest;
  // Below the end, the longest unblocked cut lies just before the space
  // whose match blocks the cut after it: it never splits a character.
  size_t cut = n;
  while (cut > 0 && reach[cut] >= cut) --cut;
  return cut;
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
  const size_t cut = CleanCut(unclean_);
  if (cut == 0) return "";
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
