#include "testing/server_fixture.h"

#include <stdexcept>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace magma::testing {

namespace refl = grpc::reflection::v1alpha;

ServerFixture::ServerFixture(api::ServerOptions options) {
  options.listen = "127.0.0.1:0";
  auto server = api::Server::Start(options);
  if (!server.ok()) throw std::runtime_error(server.status().ToString());
  server_ = *std::move(server);
  channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
}

ServerFixture::~ServerFixture() { Stop(0); }

void ServerFixture::Stop(int deadline_ms) {
  if (stopped_) return;
  stopped_ = true;
  server_->Shutdown(absl::Milliseconds(deadline_ms));
}

std::string ServerFixture::HealthStatus(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return "ERROR " + std::to_string(st.error_code());
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
}

std::vector<std::string> ServerFixture::ReflectionListServices() {
  auto stub = refl::ServerReflection::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = stub->ServerReflectionInfo(&ctx);
  refl::ServerReflectionRequest req;
  req.set_list_services("");
  stream->Write(req);
  stream->WritesDone();
  refl::ServerReflectionResponse resp;
  std::vector<std::string> names;
  while (stream->Read(&resp)) {
    for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  }
  stream->Finish();
  return names;
}

std::vector<std::string> ServerFixture::ReflectionFileContainingSymbol(const std::string& symbol) {
  auto stub = refl::ServerReflection::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = stub->ServerReflectionInfo(&ctx);
  refl::ServerReflectionRequest req;
  req.set_file_containing_symbol(symbol);
  stream->Write(req);
  stream->WritesDone();
  refl::ServerReflectionResponse resp;
  std::vector<std::string> files;
  while (stream->Read(&resp)) {
    for (const auto& f : resp.file_descriptor_response().file_descriptor_proto()) files.push_back(f);
  }
  stream->Finish();
  return files;
}

}  // namespace magma::testing
