// The gRPC front of magma-serve: health, reflection and magma.v1.AgentService
// on one listening port.
//
// Life cycle, driven by the process (main) from one thread:
//   Start() -> NOT_SERVING (calls get UNAVAILABLE while the model loads)
//   SetReady() -> SERVING
//   BeginDrain() -> NOT_SERVING (new calls get UNAVAILABLE)
//   Shutdown(deadline) -> stop accepting, in-flight calls finish or are
//   cancelled at the deadline.
#ifndef MAGMA_API_SERVER_H_
#define MAGMA_API_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace magma::api {

struct ServerOptions {
  // host:port to listen on; port 0 picks a free port (see Server::port()).
  std::string listen = "127.0.0.1:50051";
  // Largest accepted request, bytes.
  int64_t max_receive_message_bytes = 32 << 20;
  // Largest response, bytes.
  int64_t max_send_message_bytes = 32 << 20;
  // Shortest client ping interval tolerated, ms.
  int64_t keepalive_min_ping_interval_ms = 10000;
  // Server-side keepalive ping interval and ack timeout, ms.
  int64_t keepalive_time_ms = 60000;
  int64_t keepalive_timeout_ms = 20000;
  // Accept client pings on connections without calls.
  bool keepalive_permit_without_calls = true;
};

// What GetModelInfo reports once the model is loaded.
struct ServingInfo {
  std::string model_name;
  std::string architecture;
  std::string dtype;
  int64_t vocab_size = 0;
  int64_t max_context_tokens = 0;
  int64_t num_parameters = 0;
  int32_t image_crop_size = 0;
  int32_t max_crops_per_image = 0;
};

// Version string of this build, e.g. "0.1.0".
const char* ServerVersion();

class Server {
 public:
  // Binds and starts serving health (NOT_SERVING) and reflection. Errors:
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);

  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (the chosen one when options.listen ended in ":0").
  int port() const;

  // Marks the server SERVING with `info`. Thread-safe.
  void SetReady(ServingInfo info);

  // Marks the server NOT_SERVING; new AgentService calls get UNAVAILABLE.
  // Thread-safe, idempotent.
  void BeginDrain();

  // Stops accepting, waits up to `deadline` for in-flight calls, then cancels
  // the rest and returns. Call once, not from an RPC thread.
  void Shutdown(absl::Duration deadline);

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace magma::api

#endif  // MAGMA_API_SERVER_H_
