// A deterministic corpus of strings that exercise tokenizer edge cases:
// ASCII, whitespace runs, CRLF, contractions in any case, digit runs of every
// length, CJK, Arabic, Hebrew, emoji with ZWJ and skin tones, combining
// marks, NBSP, code, and special-token spellings.
#ifndef MAGMA_TESTS_TOKENIZER_CORPUS_H_
#define MAGMA_TESTS_TOKENIZER_CORPUS_H_

#include <random>
#include <string>
#include <vector>

namespace magma::testing {

inline std::vector<std::string> TokenizerCorpus(int count, uint32_t seed) {
  const std::vector<std::string> words = {
      "the", "Robot", "click", "button", "Settings", "open", "QUICK", "brown", "fox", "naïve", "café", "Größe",
      "über", "straße", "hello", "world", "Mark", "gripper", "action", "table", "x", "a", "I", "e\xCC\x81",
      "n\xCC\x83o", "日本語", "中文字符", "한국어", "こんにちは", "مرحبا", "بالعالم", "שלום", "עולם",
      "Привет", "мир", "ελληνικά", "हिन्दी", "ไทย", "😀", "👍🏽", "👩‍👩‍👧", "🏳️‍🌈", "❤️", "🤖",
      "foo_bar", "snake_case", "camelCase", "https://example.com/a?b=c", "user@example.com", "$100", "3.14159",
      "1e-9", "#include", "<div>", "</s>", "<s>", "<|eot_id|>", "<|begin_of_text|>", "<image>", "<pad>",
      "<|reserved_special_token_5|>", "<|start_header_id|>", "[INST]", "\xC2\xA0nbsp", "tab\there", "\\n",
      "{\"k\": [1, 2]}", "x += y;", "if (a && b) {", "return 0;", "→", "…", "—", "’s", "ﬁ", "Ⅻ", "½", "²"};
  const std::vector<std::string> contractions = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T",
                                                 "'RE", "'Ve", "'M", "'LL", "'D", "'Ll", "'rE"};
  const std::vector<std::string> spaces = {" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\r\n\r\n",
                                           "    ", "\xC2\xA0", "\xE3\x80\x80", " \t ", "\n   \n", "\r"};
  std::mt19937 rng(seed);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  std::vector<std::string> out;
  // Digits of every length 1..40.
  for (int len = 1; len <= 40; ++len) {
    std::string d;
    for (int i = 0; i < len; ++i) d.push_back(static_cast<char>('0' + rng() % 10));
    out.push_back(d);
    out.push_back("v" + d + "x " + d.substr(0, len / 2 + 1));
  }
  // Contractions in any case.
  for (const auto& c : contractions) {
    out.push_back("you" + c);
    out.push_back("YOU" + c + " sure");
    out.push_back(c);
  }
  // Whitespace runs alone and around words.
  for (const auto& s : spaces) {
    out.push_back(s);
    out.push_back("a" + s + "b");
    out.push_back(s + "lead");
    out.push_back("trail" + s);
  }
  // A code snippet.
  out.push_back("def f(x):\r\n    return x * 2  # double\n\n\tprint(f(21))\n");
  out.push_back("int main() {\n  std::vector<int> v{1,2,3};\n  for (int x : v) printf(\"%d\\n\", x);\n}\n");
  // Random mixtures.
  while (static_cast<int>(out.size()) < count) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) {
      switch (rng() % 6) {
        case 0: s += pick(spaces); break;
        case 1: s += pick(contractions); break;
        case 2: s += std::to_string(rng() % 100000); break;
        default: s += pick(words); break;
      }
      if (rng() % 3 != 0) s += " ";
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace magma::testing

#endif  // MAGMA_TESTS_TOKENIZER_CORPUS_H_
