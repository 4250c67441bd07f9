// Runs the real gRPC server in-process on a free loopback port, with client
// stubs for health, reflection and magma.v1.AgentService.
#ifndef MAGMA_TESTING_SERVER_FIXTURE_H_
#define MAGMA_TESTING_SERVER_FIXTURE_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "magma/api/server.h"
#include "magma/v1/agent.grpc.pb.h"

namespace magma::testing {

class ServerFixture {
 public:
  // Starts a server on 127.0.0.1:0 with `options` (listen is overridden).
  explicit ServerFixture(api::ServerOptions options = {});
  ~ServerFixture();

  api::Server& server() { return *server_; }
  int port() const { return server_->port(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port()); }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

  // Health.Check for `service` ("" = the whole server): SERVING, NOT_SERVING,
  // or the RPC's error code as "ERROR <code>".
  std::string HealthStatus(const std::string& service = "");

  // Service names listed by the reflection service (as `grpcurl list` does).
  std::vector<std::string> ReflectionListServices();

  // The file descriptor (serialized FileDescriptorProto set) reflection
  // returns for `symbol`.
  std::vector<std::string> ReflectionFileContainingSymbol(const std::string& symbol);

  // Shuts the server down (idempotent).
  void Stop(int deadline_ms = 1000);

 private:
  std::unique_ptr<api::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  bool stopped_ = false;
};

}  // namespace magma::testing

#endif  // MAGMA_TESTING_SERVER_FIXTURE_H_
