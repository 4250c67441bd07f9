// The grammar cache keeps compiled grammars within its byte and entry
// bounds, and remembers the patterns refused for their size.
#include <algorithm>

#include <gtest/gtest.h>

#include "magma/agent/tasks.h"

namespace magma::agent {
namespace {

std::shared_ptr<const engine::TokenTable> Digits() {
  std::vector<std::string> bytes = {""};  // id 0 ends an answer
  for (char c : std::string("0123456789:, []")) bytes.push_back(std::string(1, c));
  return std::make_shared<engine::TokenTable>(bytes, std::vector<int32_t>{0});
}

// A pattern of n + 1 automaton states: n ones.
std::string Chain(int n) { return std::string(n, '1'); }

TEST(GrammarCacheTest, ARepeatedPatternIsCompiledOnce) {
  GrammarCache cache;
  auto a = cache.Get(Chain(10), Digits());
  auto b = cache.Get(Chain(10), Digits());
  ASSERT_TRUE(a.ok() && b.ok()) << a.status();
  EXPECT_EQ(a->get(), b->get());
  // Eleven states of 256 transitions of 4 bytes each, and the pattern's text.
  EXPECT_GE(cache.bytes(), 11u * 256 * 4 + 10);
  EXPECT_LT(cache.bytes(), 12u * 256 * 4 + 10);
}

TEST(GrammarCacheTest, StaysWithinItsBytes) {
  const size_t one = GrammarCache().Get(Chain(100), Digits()).value()->TableBytes();
  GrammarCache cache(one + one / 2);  // room for one of these grammars, not two
  auto first = cache.Get(Chain(100), Digits());
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(cache.Get(Chain(101), Digits()).ok());
  EXPECT_LE(cache.bytes(), one + one / 2);
  auto again = cache.Get(Chain(100), Digits());
  ASSERT_TRUE(again.ok());
  EXPECT_NE(first->get(), again->get()) << "the first grammar should have made room for the second";
}

TEST(GrammarCacheTest, AGrammarLargerThanTheCacheIsNotKept) {
  GrammarCache cache(/*max_bytes=*/4096);
  auto a = cache.Get(Chain(100), Digits());
  auto b = cache.Get(Chain(100), Digits());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->get(), b->get());
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(GrammarCacheTest, CountsTheAllowedTokensAGrammarComputesAsItIsUsed) {
  const std::string pattern = Chain(100);
  const size_t fresh = GrammarCache().Get(pattern, Digits()).value()->TableBytes() + pattern.size();
  GrammarCache cache(fresh + 1000);
  auto g = cache.Get(pattern, Digits());
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(cache.bytes(), fresh);
  // The shortest answer walks all 101 states: an allowed-id list for each.
  EXPECT_EQ((*g)->MinTokens(200), 101);
  EXPECT_GT(cache.bytes(), fresh + 1000);
  // Over the bound now: the next look-up still answers, and empties the cache.
  auto again = cache.Get(pattern, Digits());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), g->get());
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(GrammarCacheTest, StaysWithinItsEntries) {
  GrammarCache cache(size_t{64} << 20, /*max_entries=*/2);
  auto first = cache.Get(Chain(3), Digits());
  ASSERT_TRUE(cache.Get(Chain(4), Digits()).ok());
  ASSERT_TRUE(cache.Get(Chain(5), Digits()).ok());  // the third empties the cache
  auto again = cache.Get(Chain(3), Digits());
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_NE(first->get(), again->get());
}

TEST(GrammarCacheTest, RemembersAPatternRefusedForItsSize) {
  GrammarCache cache;
  const std::string big = Chain(25000);  // over the automaton's 20000 states
  auto a = cache.Get(big, Digits());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kResourceExhausted) << a.status();
  EXPECT_EQ(cache.bytes(), big.size());  // the refusal is kept
  auto b = cache.Get(big, Digits());
  EXPECT_EQ(b.status(), a.status());
}

TEST(GrammarCacheTest, DoesNotKeepMalformedPatterns) {
  GrammarCache cache;
  EXPECT_EQ(cache.Get("(1", Digits()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.bytes(), 0u);
}

// True when `g` (over the byte table below: id = byte, 0 = end) accepts
// `text` followed by the end token.
bool Accepts(const engine::Grammar& g, const std::string& text) {
  auto c = g.Start();
  for (char ch : text) {
    const auto& allowed = c->Allowed();
    if (std::find(allowed.begin(), allowed.end(), static_cast<int32_t>(ch)) == allowed.end()) return false;
    c->Accept(ch);
  }
  const auto& allowed = c->Allowed();
  return std::find(allowed.begin(), allowed.end(), 0) != allowed.end();
}

std::shared_ptr<engine::TokenTable> ByteTable() {
  std::vector<std::string> bytes = {""};
  for (int c = 1; c < 128; ++c) bytes.push_back(std::string(1, static_cast<char>(c)));
  return std::make_shared<engine::TokenTable>(bytes, std::vector<int32_t>{0});
}

// The constrained Trace answer is the reference's: an optional head, then
// the traces of known marks in increasing order, blank lines between them
// and none required after the last.
TEST(TraceGrammarTest, AcceptsTheReferenceFormat) {
  const std::vector<vision::PointMark> marks = {{1, {1, 1}}, {2, {2, 2}}, {7, {3, 3}}};
  auto g = engine::CompileRegex(TraceGrammar(marks, 3), ByteTable());
  ASSERT_TRUE(g.ok()) << g.status();
  const std::string head = "Mark 2 at [12,40], Mark 7 at [0,255] should be moved, and their future positions are:\n\n";
  const std::string two = "\"Mark 2\": \"[[13,41],[14,42]]\"\n\n\"Mark 7\": \"[[1,250]]\"";
  for (const std::string& ok :
       std::vector<std::string>{head + two, two, two + "\n\n", head + "\"Mark 1\": \"[[5,5]]\"", "", head}) {
    EXPECT_TRUE(Accepts(**g, ok)) << ok;
  }
  for (const std::string& bad : std::vector<std::string>{
           head + "\"Mark 7\": \"[[1,250]]\"\n\n\"Mark 2\": \"[[13,41]]\"",         // out of order
           head + "\"Mark 3\": \"[[1,1]]\"",                                        // no such mark
           "Mark 3 at [1,1] should be moved, and their future positions are:\n\n",  // nor in the head
           two + "\n",                                                              // half a separator
           "\"Mark 1\": \"[[1,1],[2,2],[3,3],[4,4]]\"",                             // more than 3 steps
           "\"Mark 1\": \"[[256,1]]\"",                                             // off the grid
       }) {
    EXPECT_FALSE(Accepts(**g, bad)) << bad;
  }
}

// PrepareTrace refuses before compiling what TraceGrammarLeastStates puts
// over the limit: the count must never exceed the automaton's (for marks
// numbered from 1, as PrepareTrace numbers them, it is the automaton's).
TEST(TraceGrammarTest, LeastStatesBoundTheCompiledAutomaton) {
  auto table = ByteTable();
  for (const auto& [marks, steps] : std::vector<std::pair<int, int>>{
           {1, 1}, {1, 10}, {2, 10}, {9, 10}, {12, 5}, {1, 2}, {2, 1}, {3, 1}, {2, 2}, {64, 1}, {10, 3}}) {
    std::vector<vision::PointMark> points;
    for (int i = 1; i <= marks; ++i) points.push_back({i, {10.0 * i, 5.0}});
    auto g = engine::CompileRegex(TraceGrammar(points, steps), table);
    ASSERT_TRUE(g.ok()) << g.status();
    // 256 transitions of 4 bytes a state, before any allowed-id list.
    const size_t states = (*g)->TableBytes() / (256 * sizeof(int32_t));
    const size_t least = TraceGrammarLeastStates(points.size(), steps);
    EXPECT_EQ(least, states) << marks << " marks, " << steps << " steps";
  }
}

}  // namespace
}  // namespace magma::agent
