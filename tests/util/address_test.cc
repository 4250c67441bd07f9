#include "magma/util/address.h"

#include <gtest/gtest.h>

namespace magma::util {
namespace {

TEST(ParseHostPortTest, SplitsTheForms) {
  auto v4 = ParseHostPort("127.0.0.1:9464");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 9464);

  auto v6 = ParseHostPort("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);

  auto every = ParseHostPort(":65535");
  ASSERT_TRUE(every.ok()) << every.status();
  EXPECT_EQ(every->host, "");
  EXPECT_EQ(every->port, 65535);
}

TEST(ParseHostPortTest, RefusesAddressesWithoutAValidPort) {
  for (const char* bad :
       {"", "localhost", "localhost:", "localhost:65536", "localhost:-1", "host:9x", "[::1]", "host: 80", "host:+80",
        "::1", "fe80::1:9464", "[]:9464", "[localhost]:9464", "[::1]]:80", "[::1:80"}) {
    auto parsed = ParseHostPort(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(parsed.status().message().find("is not host:port"), absl::string_view::npos) << bad;
  }
  EXPECT_NE(ParseHostPort("::1:9464").status().message().find("write an IPv6 host in brackets"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace magma::util
