#include "magma/api/server.h"

#include <chrono>
#include <fstream>
#include <thread>

#include <httplib.h>
#include <iterator>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "health.h"
#include "magma/util/address.h"
#include "magma/util/file.h"
#include "magma/util/logging.h"
#include "service.h"

namespace magma::api {
namespace {

constexpr char kAgentServiceName[] = "magma.v1.AgentService";

absl::StatusOr<std::string> ReadTlsFile(const std::string& path, const char* what) {
  auto bytes = util::ReadFile(path, absl::StrCat("the TLS ", what, " file"));
  if (!bytes.ok()) return absl::InvalidArgumentError(bytes.status().message());
  return bytes;
}

}  // namespace

const char* ServerVersion() { return MAGMA_VERSION; }

class Server::Impl {
 public:
  explicit Impl(const ServerOptions& options) : service(options, &state, &metrics), health({kAgentServiceName}) {}
  ~Impl() { StopMetrics(); }
  Metrics metrics;
  ServiceState state;
  AgentServiceImpl service;
  HealthService health;  // outlives server, whose shutdown waits for every Watch to end
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::unique_ptr<httplib::Server> http;
  std::thread http_thread;
  int metrics_port = 0;

  absl::Status StartMetrics(const std::string& listen) {
    auto address = util::ParseHostPort(listen);
    if (!address.ok()) return absl::InvalidArgumentError(absl::StrCat("metrics address ", address.status().message()));
    const int requested = address->port;
    const std::string host = address->host.empty() ? "0.0.0.0" : address->host;
    http = std::make_unique<httplib::Server>();
    http->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      std::shared_ptr<Backend> backend = state.backend();
      engine::EngineStats stats;
      if (backend && backend->engine) stats = backend->engine->Stats();
      res.set_content(metrics.Render(backend && backend->engine ? &stats : nullptr), "text/plain; version=0.0.4");
    });
    metrics_port = requested == 0 ? http->bind_to_any_port(host) : (http->bind_to_port(host, requested) ? requested : -1);
    if (metrics_port <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen for metrics on '", listen, "'"));
    }
    // One scrape is a small GET: bodies are refused, and a client that stalls
    // holds a thread for at most a few seconds.
    http->set_payload_max_length(4096);
    http->set_read_timeout(std::chrono::seconds(2));
    http->set_write_timeout(std::chrono::seconds(2));
    http->set_keep_alive_timeout(2);
    http_thread = std::thread([this] { http->listen_after_bind(); });
    // httplib's stop() only works once the server listens: wait for that, so
    // that stopping right after the start (a model that fails to load) does
    // not block forever.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!http->is_running()) {
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::UnavailableError(absl::StrCat("the metrics endpoint on '", listen, "' did not start"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }
  void StopMetrics() {
    if (http) http->stop();
    if (http_thread.joinable()) http_thread.join();
  }
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    auto cert = ReadTlsFile(options.tls_cert_file, "certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadTlsFile(options.tls_key_file, "key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  }

  auto impl = std::make_unique<Impl>(options);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &impl->port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_send_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(options.keepalive_min_ping_interval_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, options.keepalive_permit_without_calls ? 1 : 0);
  // A second server on the same port must fail, not split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients may ping as often as the min interval allows, even without data.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(&impl->service);
  builder.RegisterService(&impl->health);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen, "' (address in use or invalid)"));
  }
  if (!options.metrics_listen.empty()) {
    if (auto s = impl->StartMetrics(options.metrics_listen); !s.ok()) {
      impl->server->Shutdown(std::chrono::system_clock::now());
      return s;
    }
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  impl_->health.Shutdown();
  if (impl_->server != nullptr) impl_->server->Shutdown(std::chrono::system_clock::now());
}

int Server::port() const { return impl_->port; }

int Server::metrics_port() const { return impl_->metrics_port; }

void Server::SetReady(std::shared_ptr<Backend> backend) {
  impl_->state.SetReady(std::move(backend));
  impl_->health.SetServing(true);
}

void Server::BeginDrain() {
  impl_->state.SetDraining();
  impl_->health.SetServing(false);
}

void Server::Shutdown(absl::Duration deadline) {
  BeginDrain();
  impl_->health.Shutdown();
  // Calls already accepted run on (the engine keeps decoding) until the
  // deadline, when gRPC cancels what is left; new calls are refused.
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + deadline));
  impl_->server->Wait();
  if (const auto backend = impl_->state.backend(); backend && backend->engine) backend->engine->Shutdown();
  impl_->StopMetrics();
}

}  // namespace magma::api
