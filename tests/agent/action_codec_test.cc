#include "magma/agent/action_codec.h"

#include <cmath>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::agent {
namespace {

constexpr int64_t V = 128000;

ActionCodec Codec() {
  auto c = ActionCodec::Create();
  EXPECT_TRUE(c.ok());
  return *c;
}

// Bin edges are -1 + 2i/255, so bin b's centre is -1 + (2b + 1)/255.
double Centre(int b) { return -1.0 + (2.0 * b + 1.0) / 255.0; }

struct TokenCase {
  int64_t id;
  int bin;
};

class TokenToBinTest : public ::testing::TestWithParam<TokenCase> {};

TEST_P(TokenToBinTest, MatchesTheReferenceClip) {
  const ActionCodec codec = Codec();
  EXPECT_EQ(codec.BinOfToken(GetParam().id), GetParam().bin);
  auto values = codec.Decode({GetParam().id});
  ASSERT_TRUE(values.ok());
  EXPECT_NEAR((*values)[0], Centre(GetParam().bin), 1e-15);
}

// d = clip(V - id - 1, 0, 254): the top token is bin 0 (-0.99608), the
// lowest action token's bin 255 is clipped to 254 (+0.99608).
INSTANTIATE_TEST_SUITE_P(Table, TokenToBinTest,
                         ::testing::Values(TokenCase{V - 1, 0}, TokenCase{V - 2, 1}, TokenCase{V - 128, 127},
                                           TokenCase{V - 129, 128}, TokenCase{V - 255, 254}, TokenCase{V - 256, 254}));

TEST(ActionCodecTest, HandComputedCentres) {
  const ActionCodec codec = Codec();
  EXPECT_NEAR(codec.BinCentre(0), -254.0 / 255.0, 1e-15);
  EXPECT_NEAR(codec.BinCentre(127), 0.0, 1e-15);
  EXPECT_NEAR(codec.BinCentre(128), 2.0 / 255.0, 1e-15);
  EXPECT_NEAR(codec.BinCentre(254), 254.0 / 255.0, 1e-15);
}

struct EncodeCase {
  double x;
  int64_t token;
};

class EncodeTest : public ::testing::TestWithParam<EncodeCase> {};

TEST_P(EncodeTest, DigitizesLikeNumPy) { EXPECT_EQ(Codec().TokenOf(GetParam().x), GetParam().token) << GetParam().x; }

// digitize counts the edges <= x: -1 -> 1, 0 -> 128 (edges up to
// -1 + 254/255), 1 -> 256; out-of-range values are clipped first.
INSTANTIATE_TEST_SUITE_P(Table, EncodeTest,
                         ::testing::Values(EncodeCase{-1.0, V - 1}, EncodeCase{-5.0, V - 1},
                                           EncodeCase{-1.0 + 2.0 / 255, V - 2}, EncodeCase{0.0, V - 128},
                                           EncodeCase{0.005, V - 129}, EncodeCase{1.0, V - 256},
                                           EncodeCase{3.0, V - 256}, EncodeCase{std::nan(""), V - 256}));

TEST(ActionCodecTest, EveryBinCentreRoundTrips) {
  const ActionCodec codec = Codec();
  for (int b = 0; b < 255; ++b) {
    const int64_t id = codec.TokenOf(codec.BinCentre(b));
    EXPECT_EQ(id, V - b - 1);
    EXPECT_EQ(codec.BinOfToken(id), b);
  }
  const std::vector<double> action = {Centre(3),   Centre(200), Centre(127), Centre(0),
                                      Centre(254), Centre(60),  Centre(128)};
  auto back = codec.Decode(codec.Encode(action));
  ASSERT_TRUE(back.ok());
  for (size_t i = 0; i < action.size(); ++i) EXPECT_NEAR((*back)[i], action[i], 1e-15);
}

TEST(ActionCodecTest, RejectsNonActionTokens) {
  const ActionCodec codec = Codec();
  auto got = codec.Decode({V - 3, 128009, V - 4});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find("action token 1 is id 128009"), std::string::npos) << got.status();
  EXPECT_FALSE(codec.Decode({V - 257}).ok());
  EXPECT_FALSE(ActionCodec::Create({256, 256}).ok());
  EXPECT_FALSE(ActionCodec::Create({1000, 1}).ok());
}

// bridge_orig statistics from the reference's SimplerEnv policy.
const char kStatsJson[] = R"({
  "bridge_orig": {"action": {
    "q01": [-0.02872725307941437, -0.04170349963009357, -0.026093858778476715, -0.08092105075716972,
            -0.09288699507713317, -0.20718276381492615, 0.0],
    "q99": [0.028309678435325586, 0.040855254605412394, 0.040161586627364146, 0.08192047759890528,
            0.07792850524187081, 0.20382574498653397, 1.0],
    "mask": [true, true, true, true, true, true, false]},
    "num_transitions": 100},
  "no_mask": {"action": {"q01": [0, -2], "q99": [10, 2]}}
})";

TEST(UnnormalizeTest, HandComputedBridgeAction) {
  auto stats = DatasetStatistics::FromJson(kStatsJson, "stats.json");
  ASSERT_TRUE(stats.ok()) << stats.status();
  auto bridge = stats->Find("bridge_orig");
  ASSERT_TRUE(bridge.ok());
  // x = -1 -> q01, x = 1 -> q99, x = 0 -> the midpoint; the gripper (mask
  // false) keeps its normalised value.
  auto raw = Unnormalize({-1, 1, 0, 0.5, -0.5, Centre(254), Centre(0)}, *bridge);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_NEAR((*raw)[0], -0.02872725307941437, 1e-15);
  EXPECT_NEAR((*raw)[1], 0.040855254605412394, 1e-15);
  EXPECT_NEAR((*raw)[2], (-0.026093858778476715 + 0.040161586627364146) / 2, 1e-15);
  EXPECT_NEAR((*raw)[3], -0.08092105075716972 + 0.75 * (0.08192047759890528 + 0.08092105075716972), 1e-15);
  EXPECT_NEAR((*raw)[4], -0.09288699507713317 + 0.25 * (0.07792850524187081 + 0.09288699507713317), 1e-15);
  EXPECT_NEAR((*raw)[5], -0.20718276381492615 + (509.0 / 510.0) * (0.20382574498653397 + 0.20718276381492615), 1e-15);
  EXPECT_NEAR((*raw)[6], -254.0 / 255.0, 1e-15);
  auto back = Normalize(*raw, *bridge);
  ASSERT_TRUE(back.ok());
  EXPECT_NEAR((*back)[3], 0.5, 1e-12);
  EXPECT_NEAR((*back)[6], -254.0 / 255.0, 1e-15);
}

TEST(UnnormalizeTest, MissingMaskMeansAllDimensions) {
  auto stats = DatasetStatistics::FromJson(kStatsJson, "stats.json");
  ASSERT_TRUE(stats.ok());
  auto s = stats->Find("no_mask");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->mask, (std::vector<bool>{true, true}));
  auto raw = Unnormalize({0, 0.5}, *s);
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ((*raw)[0], 5);
  EXPECT_EQ((*raw)[1], 1);
  auto wrong = Unnormalize({0, 0, 0}, *s);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("3 dimensions but the statistics have 2"), std::string::npos);
}

TEST(DatasetStatisticsTest, UnknownKeyListsTheKnownOnes) {
  auto stats = DatasetStatistics::FromJson(kStatsJson, "stats.json");
  ASSERT_TRUE(stats.ok());
  auto s = stats->Find("fractal");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("known keys: bridge_orig, no_mask"), std::string::npos) << s.status();
  EXPECT_EQ(stats->keys(), (std::vector<std::string>{"bridge_orig", "no_mask"}));
}

struct BadJson {
  const char* json;
  const char* reason;
};

class DatasetStatisticsInvalidTest : public ::testing::TestWithParam<BadJson> {};

TEST_P(DatasetStatisticsInvalidTest, Rejected) {
  auto stats = DatasetStatistics::FromJson(GetParam().json, "s.json");
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(stats.status().message().find(GetParam().reason), std::string::npos) << stats.status();
}

INSTANTIATE_TEST_SUITE_P(
    Table, DatasetStatisticsInvalidTest,
    ::testing::Values(BadJson{"{", "not valid JSON"}, BadJson{"[]", "top level must be an object"},
                      BadJson{R"({"a": {"proprio": {}}})", "a: no \"action\" object"},
                      BadJson{R"({"a": {"action": {"q01": [0]}}})", "action has no q99"},
                      BadJson{R"({"a": {"action": {"q01": [0, "x"], "q99": [1, 1]}}})", "q01[1] is not a number"},
                      BadJson{R"({"a": {"action": {"q01": [0], "q99": [1, 2]}}})", "must have one non-zero length"},
                      BadJson{R"({"a": {"action": {"q01": [0], "q99": [1], "mask": [1]}}})",
                              "mask[0] is not a boolean"},
                      BadJson{R"({"a": {"action": {"q01": [], "q99": []}}})", "non-zero length"}));

TEST(DatasetStatisticsTest, LoadsAFile) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("dataset_statistics.json"), kStatsJson);
  auto stats = DatasetStatistics::Load(dir.File("dataset_statistics.json"));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_TRUE(stats->Find("bridge_orig").ok());
  auto missing = DatasetStatistics::Load(dir.File("nope.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(ActionStatisticsTest, RequestStatisticsAreValidated) {
  ActionStatistics s{{0, 0}, {1, 1}, {true}};
  EXPECT_FALSE(s.Validate().ok());
  s.mask = {true, false};
  EXPECT_TRUE(s.Validate().ok());
  s.q99[1] = std::nan("");
  EXPECT_FALSE(s.Validate().ok());
}

}  // namespace
}  // namespace magma::agent
