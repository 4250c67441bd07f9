#include "magma/engine/sampling.h"

#include <cmath>
#include <map>

#include <gtest/gtest.h>

namespace magma::engine {
namespace {

Candidates Make(std::vector<float> logits) {
  Candidates c;
  for (size_t i = 0; i < logits.size(); ++i) c.items.push_back({static_cast<int32_t>(i), logits[i]});
  return c;
}

TEST(ProcessorTest, TemperatureDividesLogits) {
  Candidates c = Make({1, 2, 3});
  MakeTemperature(0.5f)->Apply({}, &c);
  EXPECT_FLOAT_EQ(c.items[0].logit, 2);
  EXPECT_FLOAT_EQ(c.items[2].logit, 6);
  // softmax([2, 4, 6]) by hand: e^-4, e^-2, 1 over their sum.
  const double z = std::exp(-4.0) + std::exp(-2.0) + 1.0;
  auto p = Softmax(c);
  EXPECT_NEAR(p[0], std::exp(-4.0) / z, 1e-6);
  EXPECT_NEAR(p[1], std::exp(-2.0) / z, 1e-6);
  EXPECT_NEAR(p[2], 1.0 / z, 1e-6);
}

TEST(ProcessorTest, TopKKeepsTheKLargest) {
  Candidates c = Make({0.1f, 3, 2, -1, 2.5f});
  MakeTopK(2)->Apply({}, &c);
  ASSERT_EQ(c.items.size(), 2u);
  EXPECT_EQ(c.items[0].id, 1);
  EXPECT_EQ(c.items[1].id, 4);
}

TEST(ProcessorTest, TopPKeepsTheSmallestSetReachingP) {
  // probabilities 0.6, 0.3, 0.1 (logits are their logs)
  Candidates c = Make({std::log(0.3f), std::log(0.6f), std::log(0.1f)});
  Candidates c1 = c;
  MakeTopP(0.5f)->Apply({}, &c1);
  ASSERT_EQ(c1.items.size(), 1u);
  EXPECT_EQ(c1.items[0].id, 1);
  Candidates c2 = c;
  MakeTopP(0.85f)->Apply({}, &c2);
  ASSERT_EQ(c2.items.size(), 2u);  // 0.6 + 0.3 = 0.9 >= 0.85
  Candidates c3 = c;
  MakeTopP(0.95f)->Apply({}, &c3);
  EXPECT_EQ(c3.items.size(), 3u);
}

TEST(ProcessorTest, MinPDropsTokensBelowAFractionOfTheTop) {
  // p = 0.5, 0.3, 0.15, 0.05; min_p 0.3 keeps p >= 0.15.
  Candidates c = Make({std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)});
  MakeMinP(0.3f)->Apply({}, &c);
  ASSERT_EQ(c.items.size(), 3u);
  EXPECT_EQ(c.items[2].id, 2);
}

TEST(ProcessorTest, RepetitionPenaltyAsInCtrl) {
  Candidates c = Make({2, -1, 3});
  MakeRepetitionPenalty(2)->Apply({0, 1}, &c);
  EXPECT_FLOAT_EQ(c.items[0].logit, 1);   // positive: divided
  EXPECT_FLOAT_EQ(c.items[1].logit, -2);  // negative: multiplied
  EXPECT_FLOAT_EQ(c.items[2].logit, 3);   // unseen: unchanged
}

TEST(ProcessorTest, AllowedTokensFilter) {
  Candidates c = Make({1, 2, 3, 4});
  MakeAllowedTokens({3, 0})->Apply({}, &c);
  ASSERT_EQ(c.items.size(), 2u);
  EXPECT_EQ(c.items[0].id, 0);
  EXPECT_EQ(c.items[1].id, 3);
}

TEST(SamplerTest, GreedyPicksArgmaxAndReportsLogprob) {
  SamplingParams p;
  p.temperature = 0;
  p.top_logprobs = 2;
  Sampler s(p);
  const float logits[4] = {0, 2, 1, 2};
  SampledToken t = s.Sample(logits, 4, {}, nullptr);
  EXPECT_EQ(t.id, 1);  // ties go to the smaller id
  const double z = std::log(1 + 2 * std::exp(2.0) + std::exp(1.0));
  EXPECT_NEAR(t.logprob, 2 - z, 1e-5);
  ASSERT_EQ(t.top.size(), 2u);
  EXPECT_EQ(t.top[0].id, 1);
  EXPECT_EQ(t.top[1].id, 3);
}

TEST(SamplerTest, EmpiricalFrequenciesFollowTheProcessedDistribution) {
  // T = 0.5 over logits log(p) squares and renormalises p: (0.2, 0.3, 0.5)
  // -> (0.04, 0.09, 0.25) / 0.38.
  SamplingParams p;
  p.temperature = 0.5f;
  p.seed = 123;
  Sampler s(p);
  const float logits[3] = {std::log(0.2f), std::log(0.3f), std::log(0.5f)};
  std::map<int, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) counts[s.Sample(logits, 3, {}, nullptr).id]++;
  EXPECT_NEAR(counts[0] / double(n), 0.04 / 0.38, 0.01);
  EXPECT_NEAR(counts[1] / double(n), 0.09 / 0.38, 0.01);
  EXPECT_NEAR(counts[2] / double(n), 0.25 / 0.38, 0.01);
}

// A temperature so small that logits divided by it overflow float (60 / 1e-37
// is over FLT_MAX, 20 / 1e-37 is not) samples greedily instead of from a
// distribution of NaNs.
TEST(SamplerTest, TinyTemperaturesAreGreedy) {
  const float logits[4] = {10, 60, 20, 5};
  for (float t : {1e-37f, 1e-6f}) {
    SamplingParams p;
    p.temperature = t;
    p.seed = 7;
    Sampler s(p);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(s.Sample(logits, 4, {}, nullptr).id, 1) << t;
  }
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams p;
  p.seed = 99;
  Sampler a(p), b(p);
  const float logits[5] = {1, 1.1f, 0.9f, 1.2f, 1};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Sample(logits, 5, {}, nullptr).id, b.Sample(logits, 5, {}, nullptr).id);
}

TEST(SamplerTest, AllowedSetIsRespected) {
  SamplingParams p;
  p.seed = 5;
  Sampler s(p);
  const float logits[4] = {10, 0, 0, 0};
  const std::vector<int32_t> allowed = {2, 3};
  for (int i = 0; i < 50; ++i) {
    const int id = s.Sample(logits, 4, {}, &allowed).id;
    EXPECT_TRUE(id == 2 || id == 3);
  }
}

TEST(SamplingParamsTest, Validation) {
  SamplingParams p;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
  p.temperature = -1;
  EXPECT_NE(ValidateSamplingParams(p).message().find("temperature"), std::string::npos);
  p = {};
  p.top_p = 0;
  EXPECT_NE(ValidateSamplingParams(p).message().find("top_p"), std::string::npos);
  p = {};
  p.top_p = std::nanf("");
  EXPECT_FALSE(ValidateSamplingParams(p).ok());
  p = {};
  p.top_logprobs = 21;
  EXPECT_NE(ValidateSamplingParams(p).message().find("top_logprobs"), std::string::npos);
}

}  // namespace
}  // namespace magma::engine
