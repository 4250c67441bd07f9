// Every RPC of magma.v1.AgentService against an in-process server running a
// random tiny model: success paths, every edge status code, streaming with
// cancellation, auth, and concurrent mixed calls.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <thread>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "testing/server_fixture.h"
#include "testing/tiny_model.h"

namespace magma {
namespace {

constexpr char kStats[] = R"({"bridge": {"action": {"q01": [-1, -2, -3, -0.5, -0.5, -0.5, 0],
                                                    "q99": [1, 2, 3, 0.5, 0.5, 0.5, 1],
                                                    "mask": [true, true, true, true, true, true, false]}},
                              "fractal": {"action": {"q01": [0,0,0,0,0,0,0], "q99": [1,1,1,1,1,1,1]}},
                              "planar": {"action": {"q01": [0,0], "q99": [1,1]}}})";

testing::TinyModel& Model() {
  static testing::TinyModel& m = testing::ProcessTinyModel(kStats);
  return m;
}

std::string Png(int w, int h, cv::Scalar color = cv::Scalar(200, 100, 50)) {
  cv::Mat m(h, w, CV_8UC3, color);
  cv::rectangle(m, cv::Rect(w / 4, h / 4, w / 3, h / 5), cv::Scalar(20, 200, 20), cv::FILLED);
  std::vector<uchar> out;
  cv::imencode(".png", m, out);
  return std::string(out.begin(), out.end());
}

v1::Image Image(const std::string& png) {
  v1::Image i;
  i.set_encoded(png);
  return i;
}

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }
  void Start(api::ServerOptions options) {
    fixture_ = std::make_unique<testing::ServerFixture>(options);
    fixture_->server().SetReady(Model().backend());
    stub_ = v1::AgentService::NewStub(fixture_->channel());
  }
  std::unique_ptr<grpc::ClientContext> Ctx(int seconds = 60) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
    return ctx;
  }
  std::unique_ptr<testing::ServerFixture> fixture_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
};

// ------------------------------------------------------------ Generate

TEST_F(ApiTest, GenerateAnswersAndCountsTokens) {
  v1::GenerateRequest req;
  req.set_prompt("What color is the box?");
  *req.add_images() = Image(Png(120, 80));
  req.set_max_tokens(6);
  req.mutable_sampling()->set_temperature(0);
  req.set_return_tokens(true);
  req.set_top_logprobs(3);
  v1::GenerateResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.finish_reason() == v1::LENGTH || resp.finish_reason() == v1::STOP, true);
  EXPECT_GE(resp.timings().prompt_tokens(), 30);  // chat template + 2x2 crops of image positions
  EXPECT_LE(resp.tokens_size(), 6);
  EXPECT_EQ(resp.timings().output_tokens(), resp.tokens_size());
  for (const auto& t : resp.tokens()) {
    EXPECT_LE(t.logprob(), 0);
    EXPECT_EQ(t.top_size(), 3);
    EXPECT_GE(t.top(0).logprob(), t.logprob());  // the top alternative is at least as likely
  }
  EXPECT_FALSE(resp.request_id().empty());
}

TEST_F(ApiTest, GenerateChoicesConstrainTheAnswer) {
  v1::GenerateRequest req;
  req.set_prompt("Is it red?");
  req.add_choices("yes");
  req.add_choices("no");
  v1::GenerateResponse resp;
  auto ctx = Ctx();
  ASSERT_TRUE(stub_->Generate(ctx.get(), req, &resp).ok());
  EXPECT_TRUE(resp.text() == "yes" || resp.text() == "no") << resp.text();
  EXPECT_EQ(resp.finish_reason(), v1::GRAMMAR);
}

TEST_F(ApiTest, SameSeedSameText) {
  v1::GenerateRequest req;
  req.set_prompt("Tell me something");
  req.set_max_tokens(12);
  req.mutable_sampling()->set_seed(1234);
  std::string first;
  for (int i = 0; i < 2; ++i) {
    v1::GenerateResponse resp;
    auto ctx = Ctx();
    ASSERT_TRUE(stub_->Generate(ctx.get(), req, &resp).ok());
    if (i == 0) first = resp.text();
    EXPECT_EQ(resp.text(), first);
  }
}

struct BadGenerate {
  const char* name;
  std::function<void(v1::GenerateRequest*)> edit;
  grpc::StatusCode code;
  const char* message;
};

void PrintTo(const BadGenerate& b, std::ostream* os) { *os << b.name; }

class GenerateErrorTest : public ApiTest, public ::testing::WithParamInterface<BadGenerate> {};

TEST_P(GenerateErrorTest, PreciseStatus) {
  v1::GenerateRequest req;
  req.set_prompt("hi");
  GetParam().edit(&req);
  v1::GenerateResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
  EXPECT_EQ(st.error_code(), GetParam().code) << st.error_message();
  EXPECT_NE(st.error_message().find(GetParam().message), std::string::npos) << st.error_message();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GenerateErrorTest,
    ::testing::Values(
        BadGenerate{"EmptyPrompt", [](auto* r) { r->clear_prompt(); }, grpc::INVALID_ARGUMENT, "prompt is empty"},
        BadGenerate{"PromptAndMessages",
                    [](auto* r) {
                      auto* m = r->add_messages();
                      m->set_role("user");
                      m->set_content("x");
                    },
                    grpc::INVALID_ARGUMENT, "either prompt or messages"},
        BadGenerate{"BadRole",
                    [](auto* r) {
                      r->clear_prompt();
                      auto* m = r->add_messages();
                      m->set_role("robot");
                      m->set_content("x");
                    },
                    grpc::INVALID_ARGUMENT, "role"},
        BadGenerate{"NegativeTemperature", [](auto* r) { r->mutable_sampling()->set_temperature(-1); },
                    grpc::INVALID_ARGUMENT, "temperature"},
        BadGenerate{"TopPZero", [](auto* r) { r->mutable_sampling()->set_top_p(0); }, grpc::INVALID_ARGUMENT, "top_p"},
        BadGenerate{"NaNTopP", [](auto* r) { r->mutable_sampling()->set_top_p(std::nanf("")); }, grpc::INVALID_ARGUMENT,
                    "top_p"},
        BadGenerate{"TooManyTokens", [](auto* r) { r->set_max_tokens(100000); }, grpc::RESOURCE_EXHAUSTED,
                    "max_tokens"},
        BadGenerate{"OverContext",
                    [](auto* r) {
                      r->set_max_tokens(2000);
                      r->set_prompt(std::string(3000, 'x'));
                    },
                    grpc::RESOURCE_EXHAUSTED, "context"},
        // Refused by its size before it is tokenized: 1 MiB by default.
        BadGenerate{"PromptOverTextLimit", [](auto* r) { r->set_prompt(std::string((1 << 20) + 1, 'x')); },
                    grpc::RESOURCE_EXHAUSTED, "the request has 1048577 bytes of text; at most 1048576"},
        BadGenerate{"MessagesAndStopsOverTextLimit",
                    [](auto* r) {
                      r->clear_prompt();
                      r->set_system_prompt("be brief");
                      for (const char* role : {"user", "assistant", "user"}) {
                        auto* m = r->add_messages();
                        m->set_role(role);
                        m->set_content(std::string(1 << 18, 'x'));
                      }
                      r->add_stop(std::string(1 << 17, 's'));
                      r->add_choices(std::string(1 << 17, 'c'));  // 8 + 17 (roles) + 3 * 2^18 + 2^18 bytes in all
                    },
                    grpc::RESOURCE_EXHAUSTED, "the request has 1048601 bytes of text; at most 1048576"},
        // Each message takes a token at least: more than the context holds
        // are refused before the template is built (roles count as text).
        BadGenerate{"MoreMessagesThanTheContext",
                    [](auto* r) {
                      r->clear_prompt();
                      for (int i = 0; i < 1025; ++i) r->add_messages()->set_role(i % 2 == 0 ? "user" : "assistant");
                    },
                    grpc::RESOURCE_EXHAUSTED,
                    "1025 user and assistant messages; at most 1024 (the context's positions)"},
        // A message quoting what the client sent is cut to fit a status.
        BadGenerate{"LongRoleIsQuotedInPart",
                    [](auto* r) {
                      r->clear_prompt();
                      auto* m = r->add_messages();
                      m->set_role(std::string(20000, 'r'));
                      m->set_content("x");
                    },
                    grpc::INVALID_ARGUMENT, "rrr... (19"},
        BadGenerate{"UndecodableImage", [](auto* r) { r->add_images()->set_encoded("not an image at all"); },
                    grpc::INVALID_ARGUMENT, "images[0]"},
        BadGenerate{"NoImageSource", [](auto* r) { r->add_images(); }, grpc::INVALID_ARGUMENT, "no image"},
        BadGenerate{"RawSizeMismatch",
                    [](auto* r) {
                      auto* raw = r->add_images()->mutable_raw();
                      raw->set_width(4);
                      raw->set_height(4);
                      raw->set_rgb(std::string(10, 'a'));
                    },
                    grpc::INVALID_ARGUMENT, "raw rgb"},
        BadGenerate{"HugeImageFromHeader",
                    [](auto* r) {
                      // A PNG header claiming 100000 x 100000 pixels; never decoded.
                      std::string png = Png(8, 8);
                      const unsigned char dims[8] = {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0};
                      png.replace(16, 8, reinterpret_cast<const char*>(dims), 8);
                      r->add_images()->set_encoded(png);
                    },
                    grpc::RESOURCE_EXHAUSTED, "100000x100000"},
        BadGenerate{"TooManyImages",
                    [](auto* r) {
                      for (int i = 0; i < 5; ++i) r->add_images()->set_encoded(Png(8, 8));
                    },
                    grpc::RESOURCE_EXHAUSTED, "images"},
        BadGenerate{"TopLogprobs", [](auto* r) { r->set_top_logprobs(50); }, grpc::INVALID_ARGUMENT, "top_logprobs"},
        BadGenerate{"EmptyChoice", [](auto* r) { r->add_choices(""); }, grpc::INVALID_ARGUMENT, "choice"},
        BadGenerate{"ChoicesTooLong",
                    [](auto* r) {
                      r->add_choices("yes");
                      r->add_choices(std::string(65534, 'n'));
                    },
                    grpc::RESOURCE_EXHAUSTED, "choices: the choices hold 65537 bytes in all; at most 65536"}),
    [](const ::testing::TestParamInfo<BadGenerate>& info) { return info.param.name; });

// The server's default budget stays under its own token limit; a client's
// number over the limit is refused.
TEST_F(ApiTest, DefaultBudgetStaysUnderTheTokenLimit) {
  api::ServerOptions options;
  options.limits.max_tokens = 5;
  Start(options);
  v1::GenerateRequest req;
  req.set_prompt("what colour?");
  req.mutable_sampling()->set_temperature(0);
  v1::GenerateResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_LE(resp.timings().output_tokens(), 5);
  req.set_max_tokens(6);
  auto ctx2 = Ctx();
  st = stub_->Generate(ctx2.get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_EQ(st.error_message(), "max_tokens 6 exceeds the limit of 5");
}

// An OS/2 1.x bitmap (12-byte BITMAPCOREHEADER, 16-bit width and height),
// made by hand: 3x2 pixels, 24 bits, rows padded to 12 bytes. Its size is
// read from its own header, so it is neither refused as huge nor let past
// a limit it exceeds.
TEST_F(ApiTest, Os2BitmapsAreMeasuredByTheirOwnHeader) {
  std::string bmp = {'B', 'M', 50, 0, 0, 0, 0, 0, 0, 0, 26, 0, 0, 0,  // file header: size 50, pixels at 26
                     12,  0,   0,  0, 3, 0, 2, 0, 1, 0, 24, 0};       // core header: 3x2, 1 plane, 24 bits
  bmp += std::string(24, '\x80');
  ASSERT_EQ(bmp.size(), 50u);
  for (const int64_t limit : {int64_t{5}, int64_t{0}}) {
    api::ServerOptions options;
    if (limit > 0) options.limits.max_image_pixels = limit;
    Start(options);
    v1::GenerateRequest req;
    req.set_prompt("what colour?");
    req.set_max_tokens(2);
    req.add_images()->set_encoded(bmp);
    v1::GenerateResponse resp;
    auto ctx = Ctx();
    grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
    if (limit > 0) {
      EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED) << st.error_message();
      EXPECT_NE(st.error_message().find("3x2 pixels"), std::string::npos) << st.error_message();
    } else {
      EXPECT_TRUE(st.ok()) << st.error_message();
    }
  }
}

// Sizes come from each format's header: checked before decoding.
TEST_F(ApiTest, ImageFormatsAndPixelLimitsFromHeaders) {
  cv::Mat m(45, 123, CV_8UC3, cv::Scalar(10, 200, 30));
  api::ServerOptions options;
  options.limits.max_image_pixels = 5000;  // 123 x 45 = 5535
  Start(options);
  for (const char* ext : {".png", ".jpg", ".webp", ".bmp"}) {
    std::vector<uchar> bytes;
    ASSERT_TRUE(cv::imencode(ext, m, bytes)) << ext;
    v1::GenerateRequest req;
    req.set_prompt("what colour?");
    req.set_max_tokens(2);
    req.add_images()->set_encoded(std::string(bytes.begin(), bytes.end()));
    v1::GenerateResponse resp;
    auto ctx = Ctx();
    grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
    EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED) << ext << ": " << st.error_message();
    EXPECT_NE(st.error_message().find("123x45"), std::string::npos) << ext << ": " << st.error_message();
  }
  Start({});
  for (const char* ext : {".png", ".jpg", ".webp", ".bmp"}) {
    std::vector<uchar> bytes;
    ASSERT_TRUE(cv::imencode(ext, m, bytes));
    v1::GenerateRequest req;
    req.set_prompt("what colour?");
    req.set_max_tokens(2);
    req.add_images()->set_encoded(std::string(bytes.begin(), bytes.end()));
    v1::GenerateResponse resp;
    auto ctx = Ctx();
    grpc::Status st = stub_->Generate(ctx.get(), req, &resp);
    EXPECT_TRUE(st.ok()) << ext << ": " << st.error_message();
  }
}

TEST_F(ApiTest, ClientDeadlinePropagates) {
  v1::GenerateRequest req;
  req.set_prompt("Go on forever");
  req.set_max_tokens(950);
  req.mutable_sampling()->set_temperature(1);
  v1::GenerateResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(20));
  grpc::Status st = stub_->Generate(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::DEADLINE_EXCEEDED);
}

// ------------------------------------------------------------ streaming

TEST_F(ApiTest, StreamDeltasAddUpToTheUnaryAnswer) {
  v1::GenerateRequest req;
  req.set_prompt("Describe the scene");
  req.set_max_tokens(16);
  req.mutable_sampling()->set_temperature(0);
  req.set_return_tokens(true);
  req.set_top_logprobs(2);
  v1::GenerateResponse unary;
  auto c1 = Ctx();
  ASSERT_TRUE(stub_->Generate(c1.get(), req, &unary).ok());
  auto c2 = Ctx();
  auto reader = stub_->GenerateStream(c2.get(), req);
  v1::GenerateStreamResponse msg;
  std::string text;
  std::vector<v1::GeneratedToken> tokens;
  int messages = 0;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&msg)) {
    text += msg.text_delta();
    tokens.insert(tokens.end(), msg.tokens().begin(), msg.tokens().end());
    ++messages;
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) reason = msg.finish_reason();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(text, unary.text());
  EXPECT_EQ(reason, unary.finish_reason());
  EXPECT_GE(messages, 2);
  // Each token once, in order, with the logprobs and alternatives the unary
  // answer gives it.
  ASSERT_EQ(tokens.size(), static_cast<size_t>(unary.tokens_size()));
  for (size_t i = 0; i < tokens.size(); ++i) {
    const v1::GeneratedToken& u = unary.tokens(static_cast<int>(i));
    EXPECT_EQ(tokens[i].token_id(), u.token_id()) << i;
    EXPECT_EQ(tokens[i].token(), u.token()) << i;
    EXPECT_FLOAT_EQ(tokens[i].logprob(), u.logprob()) << i;
    EXPECT_LE(tokens[i].logprob(), 0) << i;
    ASSERT_EQ(tokens[i].top_size(), 2) << i;
    EXPECT_EQ(tokens[i].top(0).token_id(), u.top(0).token_id()) << i;
    EXPECT_FLOAT_EQ(tokens[i].top(1).logprob(), u.top(1).logprob()) << i;
  }
}

// Deadlines that expire while the request is prepared or queued: the engine
// may end such a call before the worker that submitted it has returned. Every
// call gets an answer, and the server goes on serving.
TEST_F(ApiTest, CallsEndedByTheirDeadlineWhileBeingSubmittedAreAnswered) {
  v1::GenerateRequest req;
  req.set_prompt("Say something");
  req.set_max_tokens(4);
  *req.add_images() = Image(Png(120, 80));
  for (int i = 0; i < 24; ++i) {
    v1::GenerateResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::microseconds(250 * (i % 8)));
    const grpc::Status st = stub_->Generate(&ctx, req, &resp);
    EXPECT_TRUE(st.ok() || st.error_code() == grpc::DEADLINE_EXCEEDED) << st.error_code() << " " << st.error_message();
  }
  v1::GenerateResponse resp;
  auto ctx = Ctx();
  EXPECT_TRUE(stub_->Generate(ctx.get(), req, &resp).ok());
}

TEST_F(ApiTest, CancellingAStreamFreesTheEngine) {
  v1::GenerateRequest req;
  req.set_prompt("Keep talking");
  req.set_max_tokens(950);
  grpc::ClientContext ctx;
  auto reader = stub_->GenerateStream(&ctx, req);
  v1::GenerateStreamResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(reader->Read(&msg));
  ctx.TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  // The request leaves the batch: a new call gets served promptly.
  v1::GenerateRequest small;
  small.set_prompt("hi");
  small.set_max_tokens(2);
  v1::GenerateResponse resp;
  auto c = Ctx(30);
  EXPECT_TRUE(stub_->Generate(c.get(), small, &resp).ok());
}

// ------------------------------------------------------------ Click

v1::ClickRequest ClickWithElements() {
  v1::ClickRequest req;
  *req.mutable_screenshot() = Image(Png(320, 200));
  req.set_instruction("open the settings");
  const double boxes[3][4] = {{10, 10, 60, 40}, {100, 20, 180, 60}, {200, 120, 300, 190}};
  for (const auto& b : boxes) {
    auto* e = req.add_elements();
    e->mutable_box()->set_x1(b[0]);
    e->mutable_box()->set_y1(b[1]);
    e->mutable_box()->set_x2(b[2]);
    e->mutable_box()->set_y2(b[3]);
    e->set_type("button");
  }
  return req;
}

TEST_F(ApiTest, ClickResolvesAMarkToOriginalPixels) {
  v1::ClickRequest req = ClickWithElements();
  req.set_mark_base(1);
  req.set_return_som_image(true);
  v1::ClickResponse resp;
  auto ctx = Ctx();
  ASSERT_TRUE(stub_->Click(ctx.get(), req, &resp).ok());
  ASSERT_TRUE(resp.found()) << resp.raw_text();
  EXPECT_EQ(resp.rule(), v1::MARK);
  ASSERT_GE(resp.mark(), 1);
  ASSERT_LE(resp.mark(), 3);
  const auto& b = req.elements(resp.mark() - 1).box();
  EXPECT_DOUBLE_EQ(resp.click_px().x(), (b.x1() + b.x2()) / 2);
  EXPECT_DOUBLE_EQ(resp.click_px().y(), (b.y1() + b.y2()) / 2);
  EXPECT_DOUBLE_EQ(resp.click_norm().x(), resp.click_px().x() / 320);
  EXPECT_EQ(resp.raw_text(), "Mark: " + std::to_string(resp.mark()));
  EXPECT_EQ(resp.element().type(), "button");
  EXPECT_EQ(resp.candidates_size(), 3);
  cv::Mat som = cv::imdecode(std::vector<uchar>(resp.som_image_png().begin(), resp.som_image_png().end()),
                             cv::IMREAD_COLOR);
  EXPECT_EQ(som.cols, 320);
  EXPECT_EQ(som.rows, 200);
}

TEST_F(ApiTest, ClickProposesCandidatesWhenNoneAreSent) {
  v1::ClickRequest req;
  *req.mutable_screenshot() = Image(Png(320, 200));
  req.set_instruction("click the green box");
  v1::ClickResponse resp;
  auto ctx = Ctx();
  ASSERT_TRUE(stub_->Click(ctx.get(), req, &resp).ok());
  ASSERT_GE(resp.candidates_size(), 1);
  EXPECT_EQ(resp.candidates(0).type(), "proposed");
}

// A screen with more widgets than can be marked: 20 rows of 20 buttons and a
// bottom row of 20 smaller ones. The proposer keeps the smallest boxes, so
// the bottom row is marked (cutting the top-to-bottom list would drop it).
TEST_F(ApiTest, ClickOnABusyScreenMarksItsBottomRow) {
  cv::Mat screen(660, 1000, CV_8UC3, cv::Scalar(255, 255, 255));
  for (int r = 0; r <= 20; ++r) {
    for (int c = 0; c < 20; ++c) {
      const cv::Size size = r < 20 ? cv::Size(30, 18) : cv::Size(20, 12);
      cv::rectangle(screen, cv::Rect(cv::Point(10 + c * 48, 10 + r * 30), size), cv::Scalar(40, 40, 40), cv::FILLED);
    }
  }
  std::vector<uchar> png;
  cv::imencode(".png", screen, png);
  v1::ClickRequest req;
  *req.mutable_screenshot() = Image(std::string(png.begin(), png.end()));
  req.set_instruction("click the last button");
  v1::ClickResponse resp;
  auto ctx = Ctx();
  ASSERT_TRUE(stub_->Click(ctx.get(), req, &resp).ok());
  EXPECT_EQ(resp.candidates_size(), 300);
  int bottom_row = 0;
  for (const auto& e : resp.candidates()) bottom_row += e.box().y1() >= 605 ? 1 : 0;
  EXPECT_EQ(bottom_row, 20);
}

struct BadClick {
  const char* name;
  std::function<void(v1::ClickRequest*)> edit;
  grpc::StatusCode code;
  const char* message;
};
void PrintTo(const BadClick& b, std::ostream* os) { *os << b.name; }
class ClickErrorTest : public ApiTest, public ::testing::WithParamInterface<BadClick> {};

TEST_P(ClickErrorTest, PreciseStatus) {
  v1::ClickRequest req = ClickWithElements();
  GetParam().edit(&req);
  v1::ClickResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Click(ctx.get(), req, &resp);
  EXPECT_EQ(st.error_code(), GetParam().code) << st.error_message();
  EXPECT_NE(st.error_message().find(GetParam().message), std::string::npos) << st.error_message();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ClickErrorTest,
    ::testing::Values(
        BadClick{"EmptyInstruction", [](auto* r) { r->clear_instruction(); }, grpc::INVALID_ARGUMENT, "instruction"},
        BadClick{"InstructionOverTextLimit", [](auto* r) { r->set_instruction(std::string((1 << 20) + 1, 'x')); },
                 grpc::RESOURCE_EXHAUSTED, "the instruction has 1048577 bytes of text; at most 1048576"},
        BadClick{"NaNBox", [](auto* r) { r->mutable_elements(1)->mutable_box()->set_x2(std::nan("")); },
                 grpc::INVALID_ARGUMENT, "elements[1].box"},
        BadClick{"NegativeBox", [](auto* r) { r->mutable_elements(0)->mutable_box()->set_x1(-5); },
                 grpc::INVALID_ARGUMENT, "negative"},
        BadClick{"InvertedBox", [](auto* r) { r->mutable_elements(2)->mutable_box()->set_y1(500); },
                 grpc::INVALID_ARGUMENT, "inverted"},
        BadClick{"TooManyElements",
                 [](auto* r) {
                   for (int i = 0; i < 400; ++i) *r->add_elements() = r->elements(0);
                 },
                 grpc::RESOURCE_EXHAUSTED, "elements"},
        BadClick{"UnknownStyle", [](auto* r) { r->set_mark_style(static_cast<v1::MarkStyle>(9)); },
                 grpc::INVALID_ARGUMENT, "mark_style"},
        BadClick{"NoScreenshot", [](auto* r) { r->clear_screenshot(); }, grpc::INVALID_ARGUMENT, "screenshot"}),
    [](const ::testing::TestParamInfo<BadClick>& info) { return info.param.name; });

// ------------------------------------------------------------ Act

TEST_F(ApiTest, ActReturnsSevenDecodedAndUnnormalisedDimensions) {
  v1::ActRequest req;
  *req.mutable_image() = Image(Png(640, 480));
  req.set_instruction("pick up the block");
  req.set_unnorm_key("bridge");
  req.mutable_sampling()->set_temperature(0);
  v1::ActResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Act(ctx.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.action_token_ids_size(), 7);
  ASSERT_EQ(resp.action_size(), 7);
  const double q01[7] = {-1, -2, -3, -0.5, -0.5, -0.5, 0}, q99[7] = {1, 2, 3, 0.5, 0.5, 0.5, 1};
  for (int d = 0; d < 7; ++d) {
    // bins count down from the base vocabulary: bin = V - 1 - id, clipped to 0..254.
    EXPECT_GE(resp.bins(d), 0);
    EXPECT_LE(resp.bins(d), 254);
    // centre of bin b of linspace(-1, 1, 256): -1 + (2b + 1) / 255.
    EXPECT_NEAR(resp.normalized_action(d), -1.0 + (2.0 * resp.bins(d) + 1) / 255.0, 1e-12);
    const double x = resp.normalized_action(d);
    const double want = d < 6 ? 0.5 * (x + 1) * (q99[d] - q01[d]) + q01[d] : x;
    EXPECT_NEAR(resp.action(d), want, 1e-12);
  }
  EXPECT_DOUBLE_EQ(resp.gripper(), resp.action(6));
  EXPECT_GE(resp.completed_unix_ns(), resp.received_unix_ns());
}

TEST_F(ApiTest, ActErrors) {
  v1::ActRequest req;
  *req.mutable_image() = Image(Png(64, 64));
  req.set_instruction("pick");
  v1::ActResponse resp;
  {
    v1::ActRequest long_instruction = req;
    long_instruction.set_instruction(std::string((1 << 20) + 1, 'x'));
    auto ctx = Ctx();
    grpc::Status st = stub_->Act(ctx.get(), long_instruction, &resp);
    EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
    EXPECT_EQ(st.error_message(), "the instruction has 1048577 bytes of text; at most 1048576");
  }
  {
    auto ctx = Ctx();
    grpc::Status st = stub_->Act(ctx.get(), req, &resp);  // two datasets, no key
    EXPECT_EQ(st.error_code(), grpc::FAILED_PRECONDITION);
    EXPECT_NE(st.error_message().find("bridge"), std::string::npos) << st.error_message();
  }
  {
    req.set_unnorm_key("nope");
    auto ctx = Ctx();
    grpc::Status st = stub_->Act(ctx.get(), req, &resp);
    EXPECT_EQ(st.error_code(), grpc::NOT_FOUND);
    EXPECT_NE(st.error_message().find("fractal"), std::string::npos) << st.error_message();
  }
  {
    // A key of the model's statistics that does not describe a 7-DoF action
    // is the server's problem, found before generating.
    req.set_unnorm_key("planar");
    auto ctx = Ctx();
    grpc::Status st = stub_->Act(ctx.get(), req, &resp);
    EXPECT_EQ(st.error_code(), grpc::FAILED_PRECONDITION);
    EXPECT_EQ(st.error_message(),
              "the model's dataset_statistics.json has 2 action dimensions for this key; 7 expected");
  }
  {
    req.clear_unnorm_key();
    auto* s = req.mutable_statistics();
    s->add_q01(0);
    s->add_q99(1);
    s->add_mask(true);
    auto ctx = Ctx();
    EXPECT_EQ(stub_->Act(ctx.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
  }
}

// Statistics sent with the request may leave out the mask, as
// dataset_statistics.json may: then every dimension is unnormalised.
TEST_F(ApiTest, ActStatisticsWithoutAMaskUnnormaliseEveryDimension) {
  v1::ActRequest req;
  *req.mutable_image() = Image(Png(64, 64));
  req.set_instruction("pick");
  req.mutable_sampling()->set_temperature(0);
  for (int d = 0; d < 7; ++d) {
    req.mutable_statistics()->add_q01(-2.0 - d);
    req.mutable_statistics()->add_q99(4.0 + d);
  }
  v1::ActResponse resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->Act(ctx.get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.action_size(), 7);
  for (int d = 0; d < 7; ++d) {
    const double x = resp.normalized_action(d);
    EXPECT_NEAR(resp.action(d), 0.5 * (x + 1) * (6.0 + 2 * d) - 2.0 - d, 1e-12) << d;
  }
}

// ------------------------------------------------------------ Trace

constexpr int kLongPromptWords = 420;  // about 900 prompt positions

TEST_F(ApiTest, TraceFormatsAreAlwaysParseable) {
  for (auto format : {v1::MAGMA_TOM, v1::HAMSTER_PATH}) {
    v1::TraceRequest req;
    *req.mutable_image() = Image(Png(256, 128));
    req.set_instruction("put the cup on the plate");
    req.set_format(format);
    auto* m = req.add_marks();
    m->set_x(64);
    m->set_y(32);
    req.set_steps(4);
    req.set_return_overlay(true);
    v1::TraceResponse resp;
    auto ctx = Ctx();
    grpc::Status st = stub_->Trace(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(resp.parse_error().empty()) << resp.parse_error() << " in " << resp.raw_text();
    EXPECT_FALSE(resp.overlay_png().empty());
    for (const auto& t : resp.traces()) {
      EXPECT_LE(t.future_size(), 4);
      for (const auto& p : t.future()) {
        EXPECT_GE(p.px().x(), 0);
        EXPECT_LT(p.px().x(), 256);
        EXPECT_NEAR(p.norm().x(), p.px().x() / 256, 1e-9);
      }
    }
    if (format == v1::HAMSTER_PATH) {
      EXPECT_GE(resp.path_size(), 1) << resp.raw_text();
      for (const auto& p : resp.path()) {
        EXPECT_NEAR(p.px().x(), p.norm().x() * 256, 1e-9);
        EXPECT_NEAR(p.px().y(), p.norm().y() * 128, 1e-9);
      }
    }
  }
}

// Budgets the server picks (Trace's, a Generate without max_tokens) are cut
// to what the context leaves instead of refusing the request: eight marks of
// 16 steps would ask 1600 tokens of a 1024-position model.
TEST_F(ApiTest, DefaultBudgetsFitTheContext) {
  v1::TraceRequest trace;
  *trace.mutable_image() = Image(Png(256, 128));
  trace.set_instruction("put the cup on the plate");
  for (int i = 0; i < 8; ++i) {
    auto* m = trace.add_marks();
    m->set_x(16 + 28 * i);
    m->set_y(64);
  }
  v1::TraceResponse tr;
  auto ctx = Ctx();
  grpc::Status st = stub_->Trace(ctx.get(), trace, &tr);
  ASSERT_TRUE(st.ok() || st.error_code() == grpc::RESOURCE_EXHAUSTED) << st.error_message();
  if (st.ok()) {
    EXPECT_TRUE(tr.parse_error().empty()) << tr.parse_error() << " in " << tr.raw_text();
    EXPECT_GT(tr.timings().output_tokens(), 0);
    EXPECT_LE(tr.timings().prompt_tokens() + tr.timings().output_tokens(), 1024);
    // A cut answer says so; one the grammar ended lists at most 16 points a mark.
    EXPECT_NE(tr.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    for (const auto& t : tr.traces()) {
      EXPECT_TRUE(t.has_start());  // where the mark was drawn
      EXPECT_LE(t.future_size(), 16);
    }
  } else {
    EXPECT_NE(st.error_message().find("before its first trace was complete"), std::string::npos) << st.error_message();
  }

  v1::GenerateRequest gen;
  std::string words;
  for (int i = 0; i < kLongPromptWords; ++i) words += "x ";
  gen.set_prompt(words);
  gen.mutable_sampling()->set_temperature(0);
  v1::GenerateResponse resp;
  auto ctx2 = Ctx();
  st = stub_->Generate(ctx2.get(), gen, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_GT(resp.timings().prompt_tokens(), 1024 - 256);  // the default 256 would not fit
  EXPECT_GT(resp.timings().output_tokens(), 0);
  EXPECT_LE(resp.timings().prompt_tokens() + resp.timings().output_tokens(), 1024);
  // A number the client asked for is never shortened.
  gen.set_max_tokens(256);
  auto ctx3 = Ctx();
  st = stub_->Generate(ctx3.get(), gen, &resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("exceeds the context of 1024"), std::string::npos) << st.error_message();
  // A prompt with more text than 1024 of the tokenizer's longest tokens is
  // refused before it is encoded.
  v1::GenerateRequest huge;
  huge.set_prompt(std::string(1 << 20, 'x'));
  auto ctx_huge = Ctx();
  st = stub_->Generate(ctx_huge.get(), huge, &resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("bytes of text cannot fit the context of 1024 positions"), std::string::npos)
      << st.error_message();
  // With choices the default budget is what the longest choice can take.
  gen.set_max_tokens(0);
  gen.add_choices("yes");
  gen.add_choices("no");
  auto ctx4 = Ctx();
  st = stub_->Generate(ctx4.get(), gen, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(resp.text() == "yes" || resp.text() == "no") << resp.text();
  EXPECT_EQ(resp.finish_reason(), v1::GRAMMAR);
}

TEST_F(ApiTest, TraceErrors) {
  v1::TraceRequest req;
  *req.mutable_image() = Image(Png(64, 64));
  req.set_instruction("go");
  req.set_steps(500);
  v1::TraceResponse resp;
  auto ctx = Ctx();
  EXPECT_EQ(stub_->Trace(ctx.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
  req.set_steps(4);
  req.add_marks()->set_x(std::nan(""));
  auto ctx2 = Ctx();
  EXPECT_EQ(stub_->Trace(ctx2.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
  // 64 marks of 16 steps: an answer automaton of at least 64 * (16 + 26 * 16)
  // - 63 states, over the 20000 a grammar may have; refused before building it.
  req.clear_marks();
  for (int i = 0; i < 64; ++i) {
    auto* m = req.add_marks();
    m->set_x(i);
    m->set_y(i);
  }
  req.set_steps(16);
  auto ctx3 = Ctx();
  grpc::Status st = stub_->Trace(ctx3.get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("needs at least 27889 automaton states; at most 20000"), std::string::npos)
      << st.error_message();
  // The same marks answered freely are not refused for it.
  req.set_free_answer(true);
  auto ctx4 = Ctx();
  st = stub_->Trace(ctx4.get(), req, &resp);
  EXPECT_EQ(st.error_message().find("automaton states"), std::string::npos) << st.error_message();
}

// ------------------------------------------------------------ RenderOverlay and info

TEST_F(ApiTest, RenderOverlayWithoutTheModel) {
  testing::ServerFixture loading;  // never made ready
  auto stub = v1::AgentService::NewStub(loading.channel());
  v1::RenderOverlayRequest req;
  *req.mutable_image() = Image(Png(200, 100));
  auto* b = req.mutable_som()->add_boxes();
  b->set_x1(10);
  b->set_y1(10);
  b->set_x2(80);
  b->set_y2(60);
  v1::RenderOverlayResponse resp;
  auto ctx = Ctx();
  ASSERT_TRUE(stub->RenderOverlay(ctx.get(), req, &resp).ok());
  EXPECT_EQ(resp.marks_size(), 1);
  cv::Mat png = cv::imdecode(std::vector<uchar>(resp.png().begin(), resp.png().end()), cv::IMREAD_COLOR);
  EXPECT_EQ(png.cols, 200);
  req.mutable_som()->set_style(static_cast<v1::MarkStyle>(9));
  auto ctx_style = Ctx();
  grpc::Status style = stub->RenderOverlay(ctx_style.get(), req, &resp);
  EXPECT_EQ(style.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(style.error_message(), "unknown som.style");
  req.mutable_path()->set_answer("<ans>[(0.1, 0.2), <action>Open Gripper</action>, (0.5, 0.5)]</ans>");
  auto ctx2 = Ctx();
  EXPECT_TRUE(stub->RenderOverlay(ctx2.get(), req, &resp).ok());
  req.mutable_path()->set_answer("<ans>[(0.1, 0.2)");
  auto ctx3 = Ctx();
  EXPECT_EQ(stub->RenderOverlay(ctx3.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
  req.clear_overlay();
  auto ctx4 = Ctx();
  EXPECT_EQ(stub->RenderOverlay(ctx4.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
}

// Path points in pixels or normalised draw the same path; a point with
// neither, or a normalised one off the image, is refused; so are more marks
// than a Trace answer can hold.
TEST_F(ApiTest, RenderOverlayPathPointsAndLimits) {
  auto render = [&](const v1::RenderOverlayRequest& req, v1::RenderOverlayResponse* resp) {
    auto ctx = Ctx();
    return stub_->RenderOverlay(ctx.get(), req, resp);
  };
  v1::RenderOverlayRequest by_px, by_norm;
  *by_px.mutable_image() = Image(Png(200, 100));
  *by_norm.mutable_image() = Image(Png(200, 100));
  const double xs[] = {0.1, 0.5, 0.9}, ys[] = {0.2, 0.7, 0.4};
  for (int i = 0; i < 3; ++i) {
    auto* a = by_px.mutable_path()->add_points();
    a->mutable_px()->set_x(xs[i] * 200);
    a->mutable_px()->set_y(ys[i] * 100);
    a->set_gripper_open(i != 1);
    auto* b = by_norm.mutable_path()->add_points();
    b->mutable_norm()->set_x(xs[i]);
    b->mutable_norm()->set_y(ys[i]);
    b->set_gripper_open(i != 1);
  }
  v1::RenderOverlayResponse px_resp, norm_resp;
  ASSERT_TRUE(render(by_px, &px_resp).ok());
  ASSERT_TRUE(render(by_norm, &norm_resp).ok());
  EXPECT_EQ(px_resp.png(), norm_resp.png());
  const std::string original = Png(200, 100);
  cv::Mat before = cv::imdecode(std::vector<uchar>(original.begin(), original.end()), cv::IMREAD_COLOR);
  cv::Mat after = cv::imdecode(std::vector<uchar>(norm_resp.png().begin(), norm_resp.png().end()), cv::IMREAD_COLOR);
  ASSERT_EQ(after.size(), before.size());
  EXPECT_GT(cv::norm(before, after, cv::NORM_L1), 0);  // the path was drawn

  by_norm.mutable_path()->add_points()->set_gripper_open(true);
  grpc::Status st = render(by_norm, &norm_resp);
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "path.points[3] sets neither px nor norm");
  by_norm.mutable_path()->mutable_points(3)->mutable_norm()->set_x(1.5);
  st = render(by_norm, &norm_resp);
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "path.points[3].norm (1.5, 0) is outside [0, 1]");
  by_px.mutable_path()->mutable_points(1)->mutable_px()->set_y(-1e9);
  st = render(by_px, &px_resp);
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "path.points[1].px (100, -1e+09) is outside the 200x100 image");

  v1::RenderOverlayRequest marks;
  *marks.mutable_image() = Image(Png(200, 100));
  for (int i = 0; i < 1001; ++i) {
    auto* p = marks.mutable_marks()->add_points();
    p->set_x(i % 200);
    p->set_y(50);
  }
  st = render(marks, &norm_resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("1001 marks and 0 traces of 0 points; at most 1000 marks"), std::string::npos)
      << st.error_message();
}

// Images a response carries (SoM image, overlays) that do not fit the send
// limit are refused with a status that says so; the call's answer without
// them still works.
TEST_F(ApiTest, PngsOverTheSendLimitAreRefusedPrecisely) {
  api::ServerOptions options;
  options.max_send_message_bytes = 200000;
  Start(options);
  cv::Mat noise(400, 400, CV_8UC3);
  cv::RNG rng(7);
  rng.fill(noise, cv::RNG::UNIFORM, 0, 256);
  std::vector<uchar> png;
  cv::imencode(".png", noise, png);
  ASSERT_GT(png.size(), 400000u);
  const v1::Image image = Image(std::string(png.begin(), png.end()));
  const std::string over = "is a PNG of ";
  const std::string limit = " bytes; responses hold at most 200000 (grpc.max_send_message_bytes)";

  v1::RenderOverlayRequest render;
  *render.mutable_image() = image;
  render.mutable_path()->set_answer("<ans>[(0.1, 0.2), (0.5, 0.5)]</ans>");
  v1::RenderOverlayResponse render_resp;
  auto ctx = Ctx();
  grpc::Status st = stub_->RenderOverlay(ctx.get(), render, &render_resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("the overlay " + over), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(limit), std::string::npos) << st.error_message();

  v1::TraceRequest trace;
  *trace.mutable_image() = image;
  trace.set_instruction("put the cup on the plate");
  trace.set_format(v1::HAMSTER_PATH);
  trace.set_return_overlay(true);
  v1::TraceResponse trace_resp;
  auto ctx2 = Ctx();
  st = stub_->Trace(ctx2.get(), trace, &trace_resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("the overlay " + over), std::string::npos) << st.error_message();
  trace.set_return_overlay(false);
  auto ctx3 = Ctx();
  st = stub_->Trace(ctx3.get(), trace, &trace_resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_GE(trace_resp.path_size(), 1);

  v1::ClickRequest click;
  *click.mutable_screenshot() = image;
  click.set_instruction("click the button");
  auto* e = click.add_elements();
  e->mutable_box()->set_x1(10);
  e->mutable_box()->set_y1(10);
  e->mutable_box()->set_x2(60);
  e->mutable_box()->set_y2(40);
  click.set_return_som_image(true);
  v1::ClickResponse click_resp;
  auto ctx4 = Ctx();
  st = stub_->Click(ctx4.get(), click, &click_resp);
  EXPECT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("the SoM image " + over), std::string::npos) << st.error_message();
}

TEST_F(ApiTest, ModelInfoListsTasksKeysAndLimits) {
  v1::ModelInfo info;
  auto ctx = Ctx();
  ASSERT_TRUE(stub_->GetModelInfo(ctx.get(), {}, &info).ok());
  EXPECT_EQ(info.max_context_tokens(), 1024);
  EXPECT_EQ(info.dtype(), "float32");
  EXPECT_EQ(std::vector<std::string>(info.unnorm_keys().begin(), info.unnorm_keys().end()),
            (std::vector<std::string>{"bridge", "fractal", "planar"}));
  EXPECT_EQ(info.tasks_size(), 4);
  EXPECT_EQ(info.limits().max_batch(), 4);
  EXPECT_EQ(info.limits().max_elements(), 300);
  EXPECT_EQ(info.limits().max_waiting_calls(), 64);
  EXPECT_EQ(info.limits().max_text_bytes(), 1 << 20);
  EXPECT_EQ(info.limits().max_stop_strings(), 8);
  EXPECT_EQ(info.limits().max_choices(), 256);
  EXPECT_EQ(info.limits().max_response_bytes(), 32 << 20);
}

// ------------------------------------------------------------ auth and concurrency

TEST_F(ApiTest, BearerTokenGuardsTheServiceButNotHealth) {
  api::ServerOptions options;
  options.bearer_token = "s3cret";
  Start(options);
  v1::ModelInfo info;
  auto c1 = Ctx();
  grpc::Status st = stub_->GetModelInfo(c1.get(), {}, &info);
  EXPECT_EQ(st.error_code(), grpc::UNAUTHENTICATED);
  auto c2 = Ctx();
  c2->AddMetadata("authorization", "Bearer wrong");
  EXPECT_EQ(stub_->GetModelInfo(c2.get(), {}, &info).error_code(), grpc::UNAUTHENTICATED);
  auto c3 = Ctx();
  c3->AddMetadata("authorization", "Bearer s3cret");
  EXPECT_TRUE(stub_->GetModelInfo(c3.get(), {}, &info).ok());
  EXPECT_EQ(fixture_->HealthStatus(), "SERVING");
}

TEST_F(ApiTest, TlsWhenConfigured) {
  testing::TempDir dir;
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
                          dir.File("key.pem") + " -out " + dir.File("cert.pem") + " > " + dir.File("log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  api::ServerOptions options;
  options.tls_cert_file = dir.File("cert.pem");
  options.tls_key_file = dir.File("key.pem");
  Start(options);
  std::ifstream in(dir.File("cert.pem"));
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  auto secure = v1::AgentService::NewStub(grpc::CreateChannel(fixture_->address(), grpc::SslCredentials(ssl)));
  v1::ModelInfo info;
  auto c1 = Ctx(10);
  grpc::Status st = secure->GetModelInfo(c1.get(), {}, &info);
  EXPECT_TRUE(st.ok()) << st.error_message();
  auto c2 = Ctx(5);
  EXPECT_EQ(stub_->GetModelInfo(c2.get(), {}, &info).error_code(), grpc::UNAVAILABLE);  // plaintext client
  api::ServerOptions missing;
  missing.listen = "127.0.0.1:0";
  missing.tls_cert_file = dir.File("nope.pem");
  missing.tls_key_file = dir.File("key.pem");
  auto failed = api::Server::Start(missing);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("nope.pem"), std::string::npos);
}

TEST_F(ApiTest, ConcurrentMixedCalls) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 12; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      grpc::Status st;
      if (i % 3 == 0) {
        v1::GenerateRequest req;
        req.set_prompt("hello " + std::to_string(i));
        req.set_max_tokens(8);
        v1::GenerateResponse resp;
        st = stub_->Generate(&ctx, req, &resp);
      } else if (i % 3 == 1) {
        v1::ClickResponse resp;
        st = stub_->Click(&ctx, ClickWithElements(), &resp);
        if (st.ok() && !resp.found()) ++failures;
      } else {
        v1::ActRequest req;
        *req.mutable_image() = Image(Png(100, 100));
        req.set_instruction("push");
        req.set_unnorm_key("fractal");
        v1::ActResponse resp;
        st = stub_->Act(&ctx, req, &resp);
        if (st.ok() && resp.action_size() != 7) ++failures;
      }
      if (!st.ok()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// GET http://127.0.0.1:port/path with a plain socket; returns the body.
// GET `path` from `host` (an IPv4 or IPv6 address) at `port`: the body,
// or "" when the connection fails.
std::string HttpGet(int port, const std::string& path, const std::string& host = "127.0.0.1") {
  const bool v6 = host.find(':') != std::string::npos;
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
  sockaddr_storage addr{};
  socklen_t len = 0;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET6, host.c_str(), &a->sin6_addr);
    len = sizeof(*a);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, host.c_str(), &a->sin_addr);
    len = sizeof(*a);
  }
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    if (fd >= 0) close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = resp.find("\r\n\r\n");
  return body == std::string::npos ? resp : resp.substr(body + 4);
}

// The metrics address is written as gRPC's listen address is: an IPv6
// host in brackets, or no host for every interface.
TEST_F(ApiTest, MetricsListenOnIpv6AndEveryInterface) {
  api::ServerOptions options;
  options.metrics_listen = ":0";
  Start(options);
  ASSERT_GT(fixture_->server().metrics_port(), 0);
  EXPECT_NE(HttpGet(fixture_->server().metrics_port(), "/metrics").find("magma_"), std::string::npos);
  const int probe = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 loopback{};
  loopback.sin6_family = AF_INET6;
  loopback.sin6_addr = in6addr_loopback;
  const bool has_v6 = probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&loopback), sizeof(loopback)) == 0;
  if (probe >= 0) close(probe);
  if (!has_v6) GTEST_SKIP() << "no IPv6 loopback on this machine";
  options.metrics_listen = "[::1]:0";
  Start(options);
  ASSERT_GT(fixture_->server().metrics_port(), 0);
  EXPECT_NE(HttpGet(fixture_->server().metrics_port(), "/metrics", "::1").find("magma_"), std::string::npos);
}

TEST_F(ApiTest, PrometheusMetrics) {
  api::ServerOptions options;
  options.metrics_listen = "127.0.0.1:0";
  Start(options);
  ASSERT_GT(fixture_->server().metrics_port(), 0);
  v1::GenerateRequest req;
  req.set_prompt("count me");
  req.set_max_tokens(3);
  v1::GenerateResponse resp;
  auto c1 = Ctx();
  ASSERT_TRUE(stub_->Generate(c1.get(), req, &resp).ok());
  req.clear_prompt();
  auto c2 = Ctx();
  ASSERT_EQ(stub_->Generate(c2.get(), req, &resp).error_code(), grpc::INVALID_ARGUMENT);
  const std::string text = HttpGet(fixture_->server().metrics_port(), "/metrics");
  EXPECT_NE(text.find("magma_requests_total{method=\"Generate\",code=\"OK\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("magma_requests_total{method=\"Generate\",code=\"INVALID_ARGUMENT\"} 1"), std::string::npos);
  EXPECT_NE(text.find("magma_time_to_first_token_seconds_count 1"), std::string::npos) << text;
  EXPECT_NE(text.find("magma_request_latency_seconds_count 2"), std::string::npos);
  EXPECT_NE(text.find("magma_queue_depth 0"), std::string::npos);
  EXPECT_NE(text.find("magma_kv_cache_capacity_bytes"), std::string::npos);
  EXPECT_NE(text.find("magma_generated_tokens_total"), std::string::npos);
  EXPECT_NE(text.find("magma_vision_cache_hits_total"), std::string::npos);
}

}  // namespace
}  // namespace magma
