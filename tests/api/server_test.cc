#include <algorithm>
#include <condition_variable>
#include <mutex>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <grpcpp/generic/generic_stub.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "../src/api/metrics.h"
#include "magma/app/backend.h"
#include "magma/config/config.h"
#include "testing/server_fixture.h"
#include "testing/tiny_model.h"

namespace magma {
namespace {

using ::testing::Contains;

// A random tiny model with its tokenizer, loaded once for the suite.
std::shared_ptr<api::Backend> TinyInfo() {
  static testing::TinyModel& model = testing::ProcessTinyModel();
  return model.backend();
}

grpc::Status CallGetModelInfo(testing::ServerFixture& f, v1::ModelInfo* out) {
  auto stub = v1::AgentService::NewStub(f.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), out);
}

TEST(ServerTest, HealthFollowsLoadingServingDraining) {
  testing::ServerFixture f;
  EXPECT_EQ(f.HealthStatus(), "NOT_SERVING");
  EXPECT_EQ(f.HealthStatus("magma.v1.AgentService"), "NOT_SERVING");
  v1::ModelInfo info;
  grpc::Status st = CallGetModelInfo(f, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("loading"), std::string::npos) << st.error_message();

  f.server().SetReady(TinyInfo());
  EXPECT_EQ(f.HealthStatus(), "SERVING");
  EXPECT_EQ(f.HealthStatus("magma.v1.AgentService"), "SERVING");
  ASSERT_TRUE(CallGetModelInfo(f, &info).ok());
  EXPECT_EQ(info.model_name(), "model");
  EXPECT_EQ(info.architecture(), "MagmaForCausalLM");
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_EQ(info.image_crop_size(), 64);
  EXPECT_EQ(info.image_tokens_per_crop(), 6);
  EXPECT_EQ(info.chat_format(), "llama3");
  EXPECT_EQ(info.limits().max_image_bytes(), 16 << 20);
  EXPECT_FALSE(info.server_version().empty());

  f.server().BeginDrain();
  EXPECT_EQ(f.HealthStatus(), "NOT_SERVING");
  st = CallGetModelInfo(f, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("shutting down"), std::string::npos) << st.error_message();
}

TEST(ServerTest, UnknownHealthServiceIsNotFound) {
  testing::ServerFixture f;
  EXPECT_EQ(f.HealthStatus("no.such.Service"), "ERROR " + std::to_string(grpc::StatusCode::NOT_FOUND));
}

using HealthResponse = grpc::health::v1::HealthCheckResponse;

std::unique_ptr<grpc::ClientReader<HealthResponse>> Watch(const std::shared_ptr<grpc::Channel>& channel,
                                                          grpc::ClientContext* ctx, const std::string& service) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  return grpc::health::v1::Health::NewStub(channel)->Watch(ctx, req);
}

std::string NextStatus(grpc::ClientReader<HealthResponse>& stream) {
  HealthResponse resp;
  if (!stream.Read(&resp)) return "END";
  return HealthResponse::ServingStatus_Name(resp.status());
}

TEST(ServerTest, HealthWatchSendsEveryChangeAndEndsAtShutdown) {
  for (const std::string service : {"", "magma.v1.AgentService"}) {
    SCOPED_TRACE(service);
    testing::ServerFixture f;
    grpc::ClientContext ctx;
    auto stream = Watch(f.channel(), &ctx, service);
    EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
    f.server().SetReady(TinyInfo());
    EXPECT_EQ(NextStatus(*stream), "SERVING");
    f.server().BeginDrain();
    EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
    // The open stream must not hold the shutdown to its deadline: it ends
    // with the server's own status, not with the cancellation at the deadline.
    f.Stop(60000);
    EXPECT_EQ(NextStatus(*stream), "END");
    grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(st.error_message(), "the server is shutting down");
  }
}

TEST(ServerTest, HealthWatchGetsTheLastChangeBeforeShutdownEnds) {
  testing::ServerFixture f;
  grpc::ClientContext ctx;
  auto stream = Watch(f.channel(), &ctx, "");
  EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
  f.server().SetReady(TinyInfo());
  EXPECT_EQ(NextStatus(*stream), "SERVING");
  f.Stop(60000);  // drains (NOT_SERVING), then ends the stream
  EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
  EXPECT_EQ(NextStatus(*stream), "END");
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(ServerTest, HealthWatchOfUnknownServiceStaysOpenAsUnknown) {
  testing::ServerFixture f;
  grpc::ClientContext ctx;
  auto stream = Watch(f.channel(), &ctx, "no.such.Service");
  EXPECT_EQ(NextStatus(*stream), "SERVICE_UNKNOWN");
  f.server().SetReady(TinyInfo());
  f.Stop(60000);
  // No message for the change: the name stays unknown until the end.
  EXPECT_EQ(NextStatus(*stream), "END");
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(ServerTest, DestroyingTheServerEndsOpenHealthWatches) {
  api::ServerOptions options;
  options.listen = "127.0.0.1:0";
  auto server = api::Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()), grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  auto stream = Watch(channel, &ctx, "");
  EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
  server->reset();  // no Shutdown call
  EXPECT_EQ(NextStatus(*stream), "END");
  EXPECT_FALSE(stream->Finish().ok());
}

TEST(ServerTest, CancelledHealthWatchLeavesTheServerServing) {
  testing::ServerFixture f;
  {
    grpc::ClientContext ctx;
    auto stream = Watch(f.channel(), &ctx, "");
    EXPECT_EQ(NextStatus(*stream), "NOT_SERVING");
    ctx.TryCancel();
    EXPECT_EQ(NextStatus(*stream), "END");
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  f.server().SetReady(TinyInfo());
  EXPECT_EQ(f.HealthStatus(), "SERVING");
  grpc::ClientContext ctx;
  auto stream = Watch(f.channel(), &ctx, "");
  EXPECT_EQ(NextStatus(*stream), "SERVING");
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(ServerTest, ReflectionListsServices) {
  testing::ServerFixture f;
  auto names = f.ReflectionListServices();
  EXPECT_THAT(names, Contains("magma.v1.AgentService"));
  EXPECT_THAT(names, Contains("grpc.health.v1.Health"));
  EXPECT_THAT(names, Contains("grpc.reflection.v1alpha.ServerReflection"));
}

// Builds and sends a request from descriptors fetched over reflection alone,
// the way grpcurl does without .proto files.
TEST(ServerTest, ReflectionDescribesEnoughToCallWithoutProtoFiles) {
  testing::ServerFixture f;
  f.server().SetReady(TinyInfo());
  google::protobuf::DescriptorPool pool;
  auto files = f.ReflectionFileContainingSymbol("magma.v1.AgentService");
  ASSERT_FALSE(files.empty());
  for (const std::string& bytes : files) {
    google::protobuf::FileDescriptorProto proto;
    ASSERT_TRUE(proto.ParseFromString(bytes));
    pool.BuildFile(proto);
  }
  const auto* service = pool.FindServiceByName("magma.v1.AgentService");
  ASSERT_NE(service, nullptr);
  const auto* method = service->FindMethodByName("GetModelInfo");
  ASSERT_NE(method, nullptr);

  google::protobuf::DynamicMessageFactory factory(&pool);
  std::unique_ptr<google::protobuf::Message> request(factory.GetPrototype(method->input_type())->New());
  std::string wire;
  ASSERT_TRUE(request->SerializeToString(&wire));

  grpc::GenericStub stub(f.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::ByteBuffer send, recv;
  grpc::Slice slice(wire);
  send = grpc::ByteBuffer(&slice, 1);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/magma.v1.AgentService/GetModelInfo", grpc::StubOptions(), &send, &recv,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(recv.Dump(&slices).ok());
  std::string reply;
  for (const auto& s : slices) reply.append(reinterpret_cast<const char*>(s.begin()), s.size());
  std::unique_ptr<google::protobuf::Message> response(factory.GetPrototype(method->output_type())->New());
  ASSERT_TRUE(response->ParseFromString(reply));
  const auto* field = method->output_type()->FindFieldByName("model_name");
  ASSERT_NE(field, nullptr);
  EXPECT_EQ(response->GetReflection()->GetString(*response, field), "model");
}

TEST(ServerTest, RequestOverReceiveLimitIsResourceExhausted) {
  api::ServerOptions options;
  options.max_receive_message_bytes = 1024;
  testing::ServerFixture f(options);
  f.server().SetReady(TinyInfo());
  // An unknown field of 4 KiB: the transport must refuse it by size.
  std::string wire;
  wire.push_back(static_cast<char>(((1000 << 3 | 2) & 0x7f) | 0x80));
  wire.push_back(static_cast<char>((1000 << 3 | 2) >> 7));
  wire.push_back(static_cast<char>(0x80));  // length 4096 as varint
  wire.push_back(static_cast<char>(0x20));
  wire.append(4096, 'x');
  grpc::GenericStub stub(f.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice slice(wire);
  grpc::ByteBuffer send(&slice, 1), recv;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/magma.v1.AgentService/GetModelInfo", grpc::StubOptions(), &send, &recv,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
}

TEST(ServerTest, ShutdownStopsAcceptingCalls) {
  testing::ServerFixture f;
  f.server().SetReady(TinyInfo());
  EXPECT_EQ(f.HealthStatus(), "SERVING");
  f.Stop(500);
  const std::string after = f.HealthStatus();
  EXPECT_EQ(after, "ERROR " + std::to_string(grpc::StatusCode::UNAVAILABLE));
}

TEST(ServerTest, StoppingRightAfterStartingWithMetricsReturns) {
  // A model that fails to load stops the server at once; the metrics
  // endpoint's thread may not listen yet by then.
  for (int i = 0; i < 20; ++i) {
    api::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    auto server = api::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    (*server)->Shutdown(absl::ZeroDuration());
  }
}

// A config that lowers only gRPC's message limit lowers the image limit
// with it: an image travels inside a request.
TEST(ServerOptionsTest, ImageLimitStaysUnderTheMessageLimit) {
  config::ServerConfig c = config::DefaultConfig();
  EXPECT_EQ(app::ServerOptionsFrom(c).limits.max_image_bytes, 16 << 20);
  c.mutable_grpc()->set_max_receive_message_bytes(4 << 20);
  EXPECT_EQ(app::ServerOptionsFrom(c).limits.max_image_bytes, 4 << 20);
}

TEST(MetricsTest, HistogramSumsKeepTheirDigits) {
  api::Metrics metrics;
  metrics.RecordCall("Click", "OK", 12345678.25);
  metrics.RecordCall("Click", "OK", 0.5);
  const std::string text = metrics.Render(nullptr);
  EXPECT_NE(text.find("\nmagma_request_latency_seconds_sum 12345678.75\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nmagma_request_latency_seconds_count 2\n"), std::string::npos) << text;
}

TEST(ServerTest, BindingAnAddressInUseFails) {
  testing::ServerFixture f;
  api::ServerOptions options;
  options.listen = f.address();
  auto second = api::Server::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(f.address()), std::string::npos);
}

}  // namespace
}  // namespace magma
