#include "magma/engine/constraint.h"

#include <random>
#include <regex>

#include <gtest/gtest.h>

namespace magma::engine {
namespace {

// A toy vocabulary: single characters, a few multi-character tokens and an
// end token (id 0, no bytes).
std::shared_ptr<const TokenTable> ToyTable() {
  std::vector<std::string> bytes = {""};
  for (char c : std::string("0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:,[]()\"<>/._\n"))
    bytes.push_back(std::string(1, c));
  for (const char* t : {"Mark", "Mark:", ": ", "12", "255", "25", "yes", "no", "ye", "Close", "Open", " Gripper",
                        "<ans>", "</ans>", "<action>", "</action>", "0.", ", ", "[[", "]]", "\"Mark"}) {
    bytes.push_back(t);
  }
  return std::make_shared<TokenTable>(bytes, std::vector<int32_t>{0});
}

std::string Text(const TokenTable& t, const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += t.bytes(id);
  return s;
}

// Random walks through the automaton: every finished walk matches `pattern`
// (checked with std::regex), and every step offered at least one token.
void ExpectWalksMatch(const Grammar& g, const TokenTable& t, const std::string& ecma_pattern, int walks) {
  std::mt19937 rng(7);
  const std::regex re(ecma_pattern);
  for (int w = 0; w < walks; ++w) {
    auto c = g.Start();
    std::vector<int32_t> ids;
    for (int step = 0; step < 400 && !c->Finished(); ++step) {
      const auto& allowed = c->Allowed();
      ASSERT_FALSE(allowed.empty()) << "dead end after '" << Text(t, ids) << "'";
      // Prefer ending once possible half of the time, to keep walks short.
      int32_t pick = allowed[rng() % allowed.size()];
      if (std::find(allowed.begin(), allowed.end(), 0) != allowed.end() && rng() % 2) pick = 0;
      c->Accept(pick);
      if (pick != 0) ids.push_back(pick);
    }
    ASSERT_TRUE(c->Finished()) << Text(t, ids);
    EXPECT_TRUE(std::regex_match(Text(t, ids), re)) << Text(t, ids);
  }
}

// A SentencePiece model with a dummy prefix writes its answers' first piece
// with a space ("▁Mark") that decoding drops: as the first token it stands
// for "Mark", later for " Mark".
TEST(ConstraintTest, FirstTokenStandsForItsFirstBytes) {
  const std::vector<std::string> bytes = {"", " Mark", "Mark", ":", " ", "1", "2", " 1"};
  std::vector<std::string> first = bytes;
  first[1] = "Mark";
  first[7] = "1";
  auto table = std::make_shared<TokenTable>(bytes, std::vector<int32_t>{0}, first);
  EXPECT_EQ(table->first_bytes(1), "Mark");
  EXPECT_EQ(table->bytes(1), " Mark");
  auto g = CompileChoices({"Mark: 1", "Mark: 2"}, table);
  ASSERT_TRUE(g.ok()) << g.status();
  auto c = (*g)->Start();
  EXPECT_EQ(c->Allowed(), (std::vector<int32_t>{1, 2}));  // " Mark" and "Mark"
  c->Accept(1);
  EXPECT_EQ(c->Allowed(), (std::vector<int32_t>{3}));
  c->Accept(3);
  // After "Mark:" the space comes as " " or " 1", now with its space.
  EXPECT_EQ(c->Allowed(), (std::vector<int32_t>{4, 7}));
  c->Accept(7);
  EXPECT_EQ(c->Allowed(), (std::vector<int32_t>{0}));
  // A lone space piece first stands for nothing (decoding drops it); the
  // answer then goes on from the grammar's start, each token with its own
  // bytes, and only once.
  const std::vector<std::string> spaced = {"", " ", "Mark", ":", " 1"};
  auto with_space =
      std::make_shared<TokenTable>(spaced, std::vector<int32_t>{0}, std::vector<std::string>{"", "", "Mark", ":", "1"});
  auto g2 = CompileChoices({"Mark: 1"}, with_space);
  ASSERT_TRUE(g2.ok()) << g2.status();
  auto c2 = (*g2)->Start();
  EXPECT_EQ(c2->Allowed(), (std::vector<int32_t>{1, 2}));  // the lone space and "Mark"
  c2->Accept(1);
  EXPECT_EQ(c2->Allowed(), (std::vector<int32_t>{2}));  // no second lone space
  c2->Accept(2);
  c2->Accept(3);
  EXPECT_EQ(c2->Allowed(), (std::vector<int32_t>{1, 4}));  // " " and " 1", with their space now
  c2->Accept(4);
  EXPECT_EQ(c2->Allowed(), (std::vector<int32_t>{0}));
  // Without first bytes every token stands for its bytes, the first too.
  auto plain = CompileChoices({"Mark: 1"}, std::make_shared<TokenTable>(bytes, std::vector<int32_t>{0}));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->Start()->Allowed(), (std::vector<int32_t>{2}));
}

TEST(ConstraintTest, ChoicesAcceptExactlyTheList) {
  auto table = ToyTable();
  auto g = CompileChoices({"yes", "no", "maybe"}, table);
  ASSERT_TRUE(g.ok()) << g.status();
  auto c = (*g)->Start();
  // At the start: y, n, m, "yes", "no", "ye" - nothing else, no end.
  std::set<std::string> first;
  for (int32_t id : c->Allowed()) first.insert(table->bytes(id));
  EXPECT_EQ(first, (std::set<std::string>{"y", "n", "m", "yes", "no", "ye"}));
  ExpectWalksMatch(**g, *table, "yes|no|maybe", 50);
}

TEST(ConstraintTest, UiMarkAnswerOverExistingMarks) {
  auto table = ToyTable();
  auto g = CompileRegex("Mark: (0|3|12|255)", table);
  ASSERT_TRUE(g.ok()) << g.status();
  ExpectWalksMatch(**g, *table, "Mark: (0|3|12|255)", 100);
  // "Mark: 2" may continue to "25" then "255" but never end at "2" or "25".
  auto c = (*g)->Start();
  for (const char* piece : {"Mark:", " ", "2"}) {
    const auto& allowed = c->Allowed();
    auto it = std::find_if(allowed.begin(), allowed.end(), [&](int32_t id) { return table->bytes(id) == piece; });
    ASSERT_NE(it, allowed.end()) << piece;
    c->Accept(*it);
  }
  const auto& allowed = c->Allowed();
  EXPECT_EQ(std::count(allowed.begin(), allowed.end(), 0), 0);  // "Mark: 2" is incomplete
}

// The shortest complete answers by hand over the toy vocabulary: "Mark:",
// " ", "0", end (or "Mark", ": ", "0", end); "no", end; seven action
// tokens, end. Past the limit the search stops and says limit + 1.
TEST(ConstraintTest, MinTokensIsTheShortestCompleteAnswer) {
  auto table = ToyTable();
  auto mark = CompileRegex("Mark: (0|3|12|255)", table);
  ASSERT_TRUE(mark.ok()) << mark.status();
  EXPECT_EQ((*mark)->MinTokens(100), 4);
  EXPECT_EQ((*mark)->MinTokens(4), 4);
  EXPECT_EQ((*mark)->MinTokens(3), 4);
  EXPECT_EQ((*mark)->MinTokens(0), 1);
  auto choice = CompileChoices({"maybe", "no", "yes"}, table);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ((*choice)->MinTokens(10), 2);
  auto spelled = CompileRegex("abcd", table);  // one letter a token
  ASSERT_TRUE(spelled.ok()) << spelled.status();
  EXPECT_EQ((*spelled)->MinTokens(10), 5);
  std::vector<int32_t> action_ids;
  for (int i = 0; i < 256; ++i) action_ids.push_back(1000 - 256 + i);
  auto action = TokenSequenceGrammar(action_ids, 7, {2});
  EXPECT_EQ(action->MinTokens(8), 8);
  EXPECT_EQ(action->MinTokens(7), 8);
  EXPECT_EQ(TokenSequenceGrammar(action_ids, 7, {})->MinTokens(7), 7);  // no end token: it ends by length
  EXPECT_EQ((*mark)->MinTokens(3), 4);  // once found, the length is kept and still bounded by the limit
}

// A first token that decoding drops ("▁" before "Mark") costs a token but
// no bytes: with it the shortest answer is one token longer, never shorter.
TEST(ConstraintTest, MinTokensCountsAVanishingFirstToken) {
  std::vector<std::string> bytes = {"", "Mark", " Mark", ": ", "0", " "};
  std::vector<std::string> first = {"", "Mark", "Mark", ": ", "0", ""};
  auto table = std::make_shared<TokenTable>(bytes, std::vector<int32_t>{0}, first);
  auto g = CompileRegex("Mark: 0", table);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ((*g)->MinTokens(10), 4);  // "Mark" (or " Mark" read as "Mark"), ": ", "0", end
  auto digit = CompileRegex("0", table);
  ASSERT_TRUE(digit.ok()) << digit.status();
  EXPECT_EQ((*digit)->MinTokens(10), 2);  // "0", end; " " then "0" would be 3
}

TEST(ConstraintTest, ActionGrammarIsSevenActionTokensThenEnd) {
  std::vector<int32_t> action_ids;
  for (int i = 0; i < 256; ++i) action_ids.push_back(1000 - 256 + i);
  auto g = TokenSequenceGrammar(action_ids, 7, {2});
  auto c = g->Start();
  for (int i = 0; i < 7; ++i) {
    ASSERT_EQ(c->Allowed().size(), 256u);
    EXPECT_FALSE(c->Finished());
    c->Accept(800 + i);
  }
  EXPECT_EQ(c->Allowed(), std::vector<int32_t>{2});
  c->Accept(2);
  EXPECT_TRUE(c->Finished());
  EXPECT_TRUE(c->Allowed().empty());
}

TEST(ConstraintTest, PathGrammar) {
  auto table = ToyTable();
  const std::string num = "0\\.[0-9]{1,3}";
  const std::string point = "\\(" + num + ", " + num + "\\)";
  const std::string item = "(" + point + "|<action>(Close|Open) Gripper</action>)";
  auto g = CompileRegex("<ans>\\[" + item + "(, " + item + ")*\\]</ans>", table);
  ASSERT_TRUE(g.ok()) << g.status();
  const std::string enum_ = "0\\.[0-9]{1,3}";
  const std::string ecma_point = "\\(" + enum_ + ", " + enum_ + "\\)";
  const std::string ecma_item = "(" + ecma_point + "|<action>(Close|Open) Gripper</action>)";
  ExpectWalksMatch(**g, *table, "<ans>\\[" + ecma_item + "(, " + ecma_item + ")*\\]</ans>", 40);
}

TEST(ConstraintTest, MalformedPatternsAreRejectedWithPosition) {
  auto table = ToyTable();
  for (const char* bad : {"(ab", "a{3,1}", "[z-a]", "a|*", "\\q", "[]"}) {
    auto g = CompileRegex(bad, table);
    ASSERT_FALSE(g.ok()) << bad;
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(g.status().message().find("position"), std::string::npos) << g.status();
  }
  EXPECT_FALSE(CompileChoices({}, table).ok());
  EXPECT_FALSE(CompileChoices({"a", ""}, table).ok());
}

// The size of a choice list is checked before any automaton is built: 64 KiB
// in all is the most.
TEST(ConstraintTest, ChoicesOverTheSizeLimitAreResourceExhausted) {
  auto table = ToyTable();
  auto big = CompileChoices({std::string(kMaxChoiceBytes - 1, 'a'), "bc"}, table);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  EXPECT_EQ(big.status().message(), "the choices hold 65537 bytes in all; at most 65536");
}

TEST(ConstraintTest, EscapedChoicesAreLiteral) {
  auto table = ToyTable();
  auto g = CompileChoices({"a.b", "(x)"}, table);
  ASSERT_TRUE(g.ok()) << g.status();
  ExpectWalksMatch(**g, *table, "a\\.b|\\(x\\)", 30);
}

}  // namespace
}  // namespace magma::engine
