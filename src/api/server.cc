#include "magma/api/server.h"

#include <mutex>
#include <optional>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "magma/util/logging.h"
#include "magma/v1/agent.grpc.pb.h"

namespace magma::api {
namespace {

constexpr char kAgentServiceName[] = "magma.v1.AgentService";

enum class Phase { kLoading, kServing, kDraining };

// Shared between the RPC threads and the controlling thread.
class State {
 public:
  void SetReady(ServingInfo info) {
    std::lock_guard<std::mutex> lock(mu_);
    info_ = std::move(info);
    phase_ = Phase::kServing;
  }
  void SetDraining() {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = Phase::kDraining;
  }
  // OK with the info when serving, else UNAVAILABLE saying why.
  grpc::Status Serving(ServingInfo* info) const {
    std::lock_guard<std::mutex> lock(mu_);
    switch (phase_) {
      case Phase::kLoading:
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry later");
      case Phase::kDraining:
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
      case Phase::kServing:
        break;
    }
    if (info != nullptr) *info = info_;
    return grpc::Status::OK;
  }

 private:
  mutable std::mutex mu_;
  Phase phase_ = Phase::kLoading;  // guarded by mu_
  ServingInfo info_;               // guarded by mu_
};

class AgentServiceImpl final : public magma::v1::AgentService::CallbackService {
 public:
  explicit AgentServiceImpl(const State* state) : state_(state) {}

  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx,
                                         const magma::v1::GetModelInfoRequest*,
                                         magma::v1::ModelInfo* out) override {
    auto* reactor = ctx->DefaultReactor();
    ServingInfo info;
    grpc::Status status = state_->Serving(&info);
    if (status.ok()) {
      out->set_model_name(info.model_name);
      out->set_architecture(info.architecture);
      out->set_dtype(info.dtype);
      out->set_vocab_size(info.vocab_size);
      out->set_max_context_tokens(info.max_context_tokens);
      out->set_num_parameters(info.num_parameters);
      out->set_image_crop_size(info.image_crop_size);
      out->set_max_crops_per_image(info.max_crops_per_image);
      out->set_server_version(ServerVersion());
    }
    reactor->Finish(status);
    return reactor;
  }

 private:
  const State* state_;
};

}  // namespace

const char* ServerVersion() { return MAGMA_VERSION; }

class Server::Impl {
 public:
  State state;
  AgentServiceImpl agent{&state};
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  void SetHealth(bool serving) {
    auto* health = server->GetHealthCheckService();
    if (health == nullptr) return;
    health->SetServingStatus(serving);
    health->SetServingStatus(kAgentServiceName, serving);
  }
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  auto impl = std::make_unique<Impl>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &impl->port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_receive_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_send_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(options.keepalive_min_ping_interval_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(options.keepalive_timeout_ms));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             options.keepalive_permit_without_calls ? 1 : 0);
  // A second server on the same port must fail, not split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Clients may ping as often as the min interval allows, even without data.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(&impl->agent);
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen,
                                               "' (address in use or invalid)"));
  }
  impl->SetHealth(false);
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (impl_->server != nullptr) impl_->server->Shutdown(std::chrono::system_clock::now());
}

int Server::port() const { return impl_->port; }

void Server::SetReady(ServingInfo info) {
  impl_->state.SetReady(std::move(info));
  impl_->SetHealth(true);
}

void Server::BeginDrain() {
  impl_->state.SetDraining();
  impl_->SetHealth(false);
}

void Server::Shutdown(absl::Duration deadline) {
  BeginDrain();
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + deadline));
  impl_->server->Wait();
}

}  // namespace magma::api
