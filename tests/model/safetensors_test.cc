#include "magma/model/safetensors.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "testing/temp_dir.h"

namespace magma::model {
namespace {

// A file with the given JSON header and `data_bytes` bytes of data.
std::string MakeFile(const std::string& header, size_t data_bytes, int64_t header_len_override = -1) {
  std::string out(8, '\0');
  const uint64_t len = header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : header.size();
  std::memcpy(out.data(), &len, 8);
  out += header;
  out.append(data_bytes, '\x01');
  return out;
}

struct Malformed {
  const char* name;
  std::string bytes;
  const char* expected;  // substring of the error
};

void PrintTo(const Malformed& m, std::ostream* os) { *os << m.name; }

class MalformedSafetensorsTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(MalformedSafetensorsTest, RejectedWithClearError) {
  testing::TempDir dir;
  const std::string path = dir.File("model.safetensors");
  testing::WriteFile(path, GetParam().bytes);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find(path), std::string::npos) << f.status();
  EXPECT_NE(f.status().message().find(GetParam().expected), std::string::npos) << f.status();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedSafetensorsTest,
    ::testing::Values(
        Malformed{"TooShort", "abc", "less than the 8-byte header length"},
        Malformed{"HeaderLengthBeyondFile", MakeFile("{}", 0, 1 << 20), "header length"},
        Malformed{"HeaderNotJson", MakeFile("{not json", 0), "not a JSON object"},
        Malformed{"UnknownDType", MakeFile(R"({"w":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2),
                  "tensor 'w': unknown dtype 'F8'"},
        Malformed{"OffsetsOutsideFile", MakeFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                  "tensor 'w': data_offsets [0, 16] lie outside"},
        Malformed{"ShapeByteSizeMismatch", MakeFile(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16),
                  "tensor 'w': holds 16 bytes but shape [3] of F32 needs 12"},
        Malformed{"OverlappingTensors",
                  MakeFile(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                           16),
                  "overlap"},
        Malformed{"OffsetsPastTwoToThe63",
                  MakeFile(R"({"w":{"dtype":"F32","shape":[2],)"
                           R"("data_offsets":[18446742974197923840,18446742974197923848]}})",
                           8),
                  "data_offsets [18446742974197923840, 18446742974197923848] lie outside"},
        Malformed{"OverlapAcrossAnEmptyTensor",
                  MakeFile(R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},)"
                           R"("b":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                           R"("c":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})",
                           64),
                  "tensors 'a' and 'c' overlap"},
        Malformed{"NegativeDimension", MakeFile(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                  "negative"},
        Malformed{"MissingOffsets", MakeFile(R"({"w":{"dtype":"F32","shape":[1]}})", 4), "missing data_offsets"}),
    [](const ::testing::TestParamInfo<Malformed>& info) { return info.param.name; });

TEST(SafetensorsTest, RoundTripsAndMapsData) {
  testing::TempDir dir;
  const float a[3] = {1.5f, -2.f, 3.25f};
  const uint16_t b[2] = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  std::vector<TensorView> views(2);
  views[0].name = "a";
  views[0].dtype = StDType::kF32;
  views[0].shape = {3};
  views[0].data = a;
  views[0].nbytes = sizeof(a);
  views[1].name = "b.weight";
  views[1].dtype = StDType::kBF16;
  views[1].shape = {1, 2};
  views[1].data = b;
  views[1].nbytes = sizeof(b);
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"), views).ok());
  auto f = SafetensorsFile::Open(dir.File("model.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const TensorView& ra = (*f)->tensors().at("a");
  EXPECT_EQ(ra.shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(std::memcmp(ra.data, a, sizeof(a)), 0);
  const TensorView& rb = (*f)->tensors().at("b.weight");
  EXPECT_EQ(rb.dtype, StDType::kBF16);
  EXPECT_EQ(std::memcmp(rb.data, b, sizeof(b)), 0);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
}

TEST(CheckpointTest, ReadsShardedIndex) {
  testing::TempDir dir;
  const float a[2] = {1, 2}, b[1] = {3};
  TensorView va{"a", StDType::kF32, {2}, a, sizeof(a), ""};
  TensorView vb{"b", StDType::kF32, {1}, b, sizeof(b), ""};
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00001-of-00002.safetensors"), {va}).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"), {vb}).ok());
  testing::WriteFile(dir.File("model.safetensors.index.json"),
                     R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
                     R"("b":"model-00002-of-00002.safetensors"}})");
  auto c = Checkpoint::Open(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->tensors().size(), 2u);
  ASSERT_NE((*c)->Find("b"), nullptr);
  EXPECT_EQ(*static_cast<const float*>((*c)->Find("b")->data), 3.f);
  EXPECT_EQ((*c)->Find("zzz"), nullptr);
  EXPECT_EQ((*c)->total_bytes(), 12);
}

TEST(CheckpointTest, IndexNamingAMissingShardOrTensorIsAnError) {
  testing::TempDir dir;
  const float a[1] = {1};
  TensorView va{"a", StDType::kF32, {1}, a, sizeof(a), ""};
  ASSERT_TRUE(WriteSafetensors(dir.File("s1.safetensors"), {va}).ok());
  testing::WriteFile(dir.File("model.safetensors.index.json"),
                     R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("s2.safetensors"), std::string::npos) << c.status();
  testing::WriteFile(dir.File("model.safetensors.index.json"),
                     R"({"weight_map":{"a":"s1.safetensors","zz":"s1.safetensors"}})");
  c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'zz'"), std::string::npos) << c.status();
}

TensorView F32(const char* name, std::vector<int64_t> shape, const std::vector<float>& values) {
  return TensorView{
      name, StDType::kF32, std::move(shape), values.data(), static_cast<int64_t>(values.size() * sizeof(float)), ""};
}

const float* Floats(const SafetensorsFile& f, const std::string& name) {
  return static_cast<const float*>(f.tensors().at(name).data);
}

TEST(AverageSafetensorsTest, MeansInDoublePrecisionAndKeepsTheFirstFilesLayout) {
  testing::TempDir dir;
  const float one = 1.0f, next = std::nextafter(1.0f, 2.0f);  // 1 + 2^-23
  // "z" is written before "a", against name order.
  const std::vector<std::vector<float>> z = {{1, 3}, {2, 4}, {3, 8}};
  const std::vector<std::vector<float>> a = {{one, -1}, {next, 0.5f}, {next, 2}};
  std::vector<std::string> inputs;
  for (int i = 0; i < 3; ++i) {
    inputs.push_back(dir.File("step-" + std::to_string(i) + ".safetensors"));
    // The first file's metadata is the one kept.
    const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"run", "r" + std::to_string(i)}};
    ASSERT_TRUE(WriteSafetensors(inputs.back(), {F32("z", {2}, z[i]), F32("a", {1, 2}, a[i])}, metadata).ok());
  }
  ASSERT_TRUE(AverageSafetensors(inputs, dir.File("mean.safetensors")).ok());
  auto f = SafetensorsFile::Open(dir.File("mean.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(Floats(**f, "z")[0], 2.0f);
  EXPECT_EQ(Floats(**f, "z")[1], 5.0f);
  // (1 + 2 (1 + 2^-23)) / 3 = 1 + 2^-23 * 2/3: nearest float 1 + 2^-23. A
  // float32 running sum rounds 2 + 2^-23 and 3 + 2^-23 down (ties to even)
  // and would give exactly 1.
  EXPECT_EQ(Floats(**f, "a")[0], next);
  EXPECT_EQ(Floats(**f, "a")[1], 0.5f);
  EXPECT_EQ((*f)->tensors().at("a").shape, (std::vector<int64_t>{1, 2}));
  EXPECT_LT(static_cast<const char*>((*f)->tensors().at("z").data),
            static_cast<const char*>((*f)->tensors().at("a").data));
  EXPECT_EQ((*f)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"run", "r0"}}));
  // One input: a copy.
  ASSERT_TRUE(AverageSafetensors({inputs[1]}, dir.File("one.safetensors")).ok());
  std::ifstream x(inputs[1], std::ios::binary), y(dir.File("one.safetensors"), std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(x), {}), std::string(std::istreambuf_iterator<char>(y), {}));
}

TEST(AverageSafetensorsTest, RefusesFilesThatCannotBeAveraged) {
  testing::TempDir dir;
  const std::vector<float> two = {1, 2}, three = {1, 2, 3};
  const uint16_t bf16[2] = {0x3f80, 0x4000};
  ASSERT_TRUE(WriteSafetensors(dir.File("w.safetensors"), {F32("w", {2}, two)}).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("shape.safetensors"), {F32("w", {3}, three)}).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("name.safetensors"), {F32("v", {2}, two)}).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("more.safetensors"), {F32("w", {2}, two), F32("v", {2}, two)}).ok());
  ASSERT_TRUE(
      WriteSafetensors(dir.File("bf16.safetensors"), {TensorView{"w", StDType::kBF16, {2}, bf16, sizeof(bf16), ""}})
          .ok());
  struct Case {
    std::vector<std::string> inputs;
    absl::StatusCode code;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{}, absl::StatusCode::kInvalidArgument, "at least one"},
      {{"w", "missing"}, absl::StatusCode::kNotFound, "missing.safetensors"},
      {{"w", "shape"}, absl::StatusCode::kInvalidArgument, "shape [3] against [2]"},
      {{"w", "name"}, absl::StatusCode::kInvalidArgument, "tensor v is not in both"},
      {{"w", "more"}, absl::StatusCode::kInvalidArgument, "2 tensors against 1"},
      {{"bf16"}, absl::StatusCode::kInvalidArgument, "is BF16"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> paths;
    for (const auto& name : c.inputs) paths.push_back(dir.File(name + ".safetensors"));
    const absl::Status s = AverageSafetensors(paths, dir.File("out.safetensors"));
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_NE(s.message().find(c.says), std::string::npos) << s;
    EXPECT_FALSE(std::ifstream(dir.File("out.safetensors")).good()) << "written despite " << s;
  }
}

TEST(CheckpointTest, EmptyDirectoryIsNotFound) {
  testing::TempDir dir;
  auto c = Checkpoint::Open(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace magma::model
