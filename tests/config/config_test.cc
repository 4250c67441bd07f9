#include "magma/config/config.h"

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::config {
namespace {

TEST(ConfigTest, DefaultsAreValid) {
  ServerConfig c = DefaultConfig();
  EXPECT_TRUE(Validate(c).ok());
  EXPECT_EQ(c.listen(), "127.0.0.1:50051");
  EXPECT_EQ(c.grpc().max_receive_message_bytes(), 32 << 20);
  EXPECT_EQ(c.grpc().keepalive_min_ping_interval_ms(), 10000);
}

TEST(ConfigTest, ShippedDefaultFileIsValid) {
  auto c = LoadFile(std::string(MAGMA_SOURCE_DIR) + "/configs/default.textproto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(Validate(*c).ok());
  EXPECT_EQ(c->model().dir(), "models/magma-tiny");
}

TEST(ConfigTest, FileOverridesOnlyWhatItNames) {
  auto c = ParseText("threads: 3\ngrpc { keepalive_time_ms: 5000 }\n", "t");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->threads(), 3);
  EXPECT_EQ(c->grpc().keepalive_time_ms(), 5000);
  EXPECT_EQ(c->grpc().max_receive_message_bytes(), 32 << 20);  // default kept
  EXPECT_EQ(c->listen(), "127.0.0.1:50051");
}

TEST(ConfigTest, UnknownFieldIsRejectedWithItsNameAndPosition) {
  auto c = ParseText("threads: 2\nmax_batch: 9\n", "my.textproto");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("max_batch"), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("my.textproto:2:"), std::string::npos) << c.status();
}

TEST(ConfigTest, WrongTypeIsRejected) {
  auto c = ParseText("threads: \"two\"\n", "t");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("threads"), std::string::npos) << c.status();
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto c = LoadFile("/nonexistent/dir/x.textproto");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/dir/x.textproto"), std::string::npos);
}

struct BadValue {
  const char* text;
  const char* field;
};

void PrintTo(const BadValue& b, std::ostream* os) { *os << b.text; }

class ConfigValidateTest : public ::testing::TestWithParam<BadValue> {};

TEST_P(ConfigValidateTest, NamesTheField) {
  auto c = ParseText(GetParam().text, "t");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status s = Validate(*c);
  ASSERT_FALSE(s.ok()) << GetParam().text;
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(GetParam().field), std::string::npos) << s;
}

INSTANTIATE_TEST_SUITE_P(
    Table, ConfigValidateTest,
    ::testing::Values(
        BadValue{"listen: \"nohost\"", "listen"}, BadValue{"threads: -1", "threads"},
        BadValue{"log_level: \"loud\"", "log_level"}, BadValue{"drain_deadline_ms: -5", "drain_deadline_ms"},
        BadValue{"grpc { max_receive_message_bytes: 0 }", "grpc.max_receive_message_bytes"},
        BadValue{"grpc { keepalive_time_ms: 0 }", "grpc.keepalive_time_ms"},
        BadValue{"grpc { keepalive_timeout_ms: 2147483648 }", "grpc.keepalive_timeout_ms"},
        BadValue{"grpc { keepalive_min_ping_interval_ms: 9999999999 }", "grpc.keepalive_min_ping_interval_ms"},
        BadValue{"model { dir: \"\" }", "model.dir"}, BadValue{"model { dtype: \"int8\" }", "model.dtype"},
        BadValue{"model { vision_dtype: \"fp16\" }", "model.vision_dtype"},
        BadValue{"model { weights: \"hugepages\" }", "model.weights"},
        BadValue{"limits { max_waiting_calls: 0 }", "limits.max_waiting_calls"},
        BadValue{"limits { max_text_bytes: 0 }", "limits.max_text_bytes"},
        BadValue{"metrics_listen: \"9464\"", "metrics_listen"},
        BadValue{"metrics_listen: \"127.0.0.1:70000\"", "metrics_listen"}));

}  // namespace
}  // namespace magma::config
