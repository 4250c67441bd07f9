// magma.v1.AgentService over the engine (private to the api component).
#ifndef MAGMA_SRC_API_SERVICE_H_
#define MAGMA_SRC_API_SERVICE_H_

#include <memory>
#include <mutex>

#include "magma/api/server.h"
#include "metrics.h"
#include "magma/util/thread_pool.h"
#include "magma/v1/agent.grpc.pb.h"

namespace magma::api {

enum class Phase { kLoading, kServing, kDraining };

// Shared between RPC threads and the controlling thread.
class ServiceState {
 public:
  void SetReady(std::shared_ptr<Backend> backend);
  void SetDraining();
  // The backend when serving; else UNAVAILABLE saying why.
  absl::StatusOr<std::shared_ptr<Backend>> Get() const;
  // The backend whatever the phase (null while loading).
  std::shared_ptr<Backend> backend() const;
  bool draining() const;

 private:
  mutable std::mutex mu_;
  Phase phase_ = Phase::kLoading;     // guarded by mu_
  std::shared_ptr<Backend> backend_;  // guarded by mu_
};

class AgentServiceImpl final : public v1::AgentService::CallbackService {
 public:
  // `metrics` (not owned) outlives the service.
  AgentServiceImpl(const ServerOptions& options, const ServiceState* state, Metrics* metrics);
  ~AgentServiceImpl() override;

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req,
                                     v1::GenerateResponse* resp) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(grpc::CallbackServerContext* ctx,
                                                                       const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Click(grpc::CallbackServerContext* ctx, const v1::ClickRequest* req,
                                  v1::ClickResponse* resp) override;
  grpc::ServerUnaryReactor* Act(grpc::CallbackServerContext* ctx, const v1::ActRequest* req,
                                v1::ActResponse* resp) override;
  grpc::ServerUnaryReactor* Trace(grpc::CallbackServerContext* ctx, const v1::TraceRequest* req,
                                  v1::TraceResponse* resp) override;
  grpc::ServerUnaryReactor* RenderOverlay(grpc::CallbackServerContext* ctx, const v1::RenderOverlayRequest* req,
                                          v1::RenderOverlayResponse* resp) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest* req,
                                         v1::ModelInfo* resp) override;

 private:
  absl::Status Authorize(grpc::CallbackServerContext* ctx) const;
  const ServerOptions options_;
  const ServiceState* state_;
  Metrics* metrics_;
  std::unique_ptr<ThreadPool> workers_;
};

}  // namespace magma::api

#endif  // MAGMA_SRC_API_SERVICE_H_
