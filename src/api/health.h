// grpc.health.v1.Health for magma-serve: Check and Watch over a fixed set of
// service names, all of which share one serving state.
//
// gRPC's default health service starts SERVING and can only be set to
// NOT_SERVING once the server runs, so a probe in between would see a server
// that has no model yet as ready. This one starts NOT_SERVING.
#ifndef MAGMA_API_HEALTH_H_
#define MAGMA_API_HEALTH_H_

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

namespace magma::api {

class HealthWatch;

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  // `services`: the names Check and Watch know besides "" (the whole server).
  // Every one starts NOT_SERVING.
  explicit HealthService(std::vector<std::string> services);
  ~HealthService() override;
  HealthService(const HealthService&) = delete;
  HealthService& operator=(const HealthService&) = delete;

  // Sets every name SERVING or NOT_SERVING and sends the change to every open
  // Watch. Thread-safe; no effect after Shutdown.
  void SetServing(bool serving);

  // NOT_SERVING for good: every open Watch gets NOT_SERVING, then ends with
  // UNAVAILABLE, and later Watch calls end the same way at once. Call before
  // grpc::Server::Shutdown, which otherwise waits its whole deadline for the
  // streams. Thread-safe, idempotent.
  void Shutdown();

  // Unknown names: NOT_FOUND.
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req,
                                  grpc::health::v1::HealthCheckResponse* resp) override;
  // Sends the name's status, then every change. An unknown name gets
  // SERVICE_UNKNOWN and the stream stays open, as the protocol asks.
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* ctx, const grpc::health::v1::HealthCheckRequest* req) override;

 private:
  friend class HealthWatch;
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;
  Status StatusOfLocked(const std::string& service) const;
  // Sets the state (for good with `shut_down`) and sends it to every open
  // Watch; nothing after a shutdown.
  void Change(bool serving, bool shut_down);
  void Forget(HealthWatch* watch);

  const std::set<std::string> services_;
  std::mutex mu_;
  bool serving_ = false;         // guarded by mu_
  bool shut_down_ = false;       // guarded by mu_
  std::set<HealthWatch*> open_;  // guarded by mu_; each removes itself in OnDone
};

}  // namespace magma::api

#endif  // MAGMA_API_HEALTH_H_
