// The gRPC front of magma-serve: health, reflection and magma.v1.AgentService
// on one listening port. The RPC layer only validates, converts protos to
// domain requests (agent tasks) and submits them to the engine; status codes
// are made in one place (status.cc).
//
// Life cycle, driven by the process (main) from one thread:
//   Start() -> NOT_SERVING (model calls get UNAVAILABLE while the model loads)
//   SetReady(backend) -> SERVING
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
#include "magma/agent/tasks.h"
#include "magma/engine/engine.h"

namespace magma::api {

// Limits checked at the edge, before any work. All reported by GetModelInfo.
struct Limits {
  int64_t max_image_bytes = 16 << 20;       // one encoded image
  int64_t max_image_pixels = 4096 * 4096;   // width * height, from the header
  int32_t max_images_per_request = 4;
  int32_t max_elements = 300;               // Click candidate elements
  int32_t max_tokens = 2048;                // largest max_tokens
  int32_t max_stop_strings = 8;
  int32_t max_choices = 256;
  // Calls waiting for a worker thread (image decoding, overlays,
  // tokenization) before they reach the engine's queue; more get
  // RESOURCE_EXHAUSTED.
  int32_t max_waiting_calls = 64;
  // Text bytes of one call, counted before tokenizing (a prompt far longer
  // than any context would otherwise be tokenized in full to be refused).
  int64_t max_text_bytes = 1 << 20;
};

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
  // Threads that decode images, draw overlays and tokenize (never the model
  // thread). Default 2.
  int worker_threads = 2;
  // When non-empty, AgentService calls need "authorization: Bearer <token>";
  // health and reflection stay open.
  std::string bearer_token;
  // PEM files for TLS; both empty = plaintext.
  std::string tls_cert_file;
  std::string tls_key_file;
  // host:port of the Prometheus endpoint (GET /metrics): "[::1]:port" for
  // an IPv6 host, ":port" for every interface; port 0 picks a free port;
  // empty = no endpoint. Default "".
  std::string metrics_listen;
  Limits limits;
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
  int32_t image_tokens_per_crop = 0;
  int32_t max_queue = 0;
  int32_t max_batch = 0;
};

// Everything the model calls need, handed over once the model is loaded.
struct Backend {
  std::unique_ptr<engine::Engine> engine;
  agent::TaskContext tasks;
  ServingInfo info;
};

// Version string of this build, e.g. "0.1.0".
const char* ServerVersion();

class Server {
 public:
  // Binds and starts serving health (NOT_SERVING) and reflection. Errors:
  // UNAVAILABLE when an address cannot be bound, INVALID_ARGUMENT for
  // unreadable TLS files or a malformed metrics address.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);

  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (the chosen one when options.listen ended in ":0").
  int port() const;
  // The metrics port, or 0 without an endpoint.
  int metrics_port() const;

  // Installs the backend and marks the server SERVING. Thread-safe.
  void SetReady(std::shared_ptr<Backend> backend);

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
