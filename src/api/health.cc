#include "health.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "status.h"

namespace magma::api {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One open Watch stream. At most one write is in flight; a change that comes
// during a write is sent after it, and only the latest status is sent. Each
// step (a write or the finish) is claimed under mu_ and started with no lock
// held, so a reaction gRPC runs inline cannot deadlock; the reactor lives
// until OnDone, which comes only after the claimed Finish.
class HealthWatch final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  enum class Step { kNone, kWrite, kFinish };

  HealthWatch(HealthService* service, std::string name) : service_(service), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

  // Records the status to send (and, with `end`, that the stream ends after
  // it) and claims the next step; the caller starts it with Start().
  Step Update(HealthCheckResponse::ServingStatus status, bool end) {
    std::lock_guard<std::mutex> lock(mu_);
    wanted_ = status;
    if (end && !end_) {
      end_ = true;
      end_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
    }
    return ClaimLocked();
  }

  void Start(Step step) {
    if (step == Step::kWrite) StartWrite(&out_);
    if (step == Step::kFinish) Finish(final_status_);
  }

  void OnWriteDone(bool ok) override {
    Step step;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) CancelLocked();
      step = ClaimLocked();
    }
    Start(step);
  }

  void OnCancel() override {
    Step step;
    {
      std::lock_guard<std::mutex> lock(mu_);
      CancelLocked();
      step = ClaimLocked();
    }
    Start(step);
  }

  void OnDone() override {
    service_->Forget(this);
    delete this;
  }

 private:
  void CancelLocked() {
    cancelled_ = true;
    end_ = true;
    end_status_ = grpc::Status::CANCELLED;
  }

  Step ClaimLocked() {
    if (writing_ || finished_) return Step::kNone;
    if (!cancelled_ && (!sent_any_ || sent_ != wanted_)) {
      out_.set_status(wanted_);
      sent_ = wanted_;
      sent_any_ = true;
      writing_ = true;
      return Step::kWrite;
    }
    if (end_) {
      finished_ = true;
      final_status_ = end_status_;  // a later OnCancel may still change end_status_
      return Step::kFinish;
    }
    return Step::kNone;
  }

  HealthService* const service_;
  const std::string name_;
  std::mutex mu_;
  // All guarded by mu_; out_ and final_status_ are not touched while the step
  // that uses them is in flight.
  HealthCheckResponse::ServingStatus wanted_ = HealthCheckResponse::NOT_SERVING;
  HealthCheckResponse::ServingStatus sent_ = HealthCheckResponse::NOT_SERVING;
  bool sent_any_ = false;
  bool writing_ = false;
  bool cancelled_ = false;
  bool end_ = false;
  bool finished_ = false;
  grpc::Status end_status_;
  grpc::Status final_status_;
  HealthCheckResponse out_;
};

HealthService::HealthService(std::vector<std::string> services) : services_(services.begin(), services.end()) {}

HealthService::~HealthService() = default;

HealthService::Status HealthService::StatusOfLocked(const std::string& service) const {
  if (!service.empty() && services_.count(service) == 0) return HealthCheckResponse::SERVICE_UNKNOWN;
  return serving_ ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
}

void HealthService::SetServing(bool serving) { Change(serving, /*shut_down=*/false); }

void HealthService::Shutdown() { Change(/*serving=*/false, /*shut_down=*/true); }

void HealthService::Change(bool serving, bool shut_down) {
  std::vector<std::pair<HealthWatch*, HealthWatch::Step>> steps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = shut_down;
    serving_ = serving;
    for (HealthWatch* watch : open_) {
      const HealthWatch::Step step = watch->Update(StatusOfLocked(watch->name()), shut_down);
      if (step != HealthWatch::Step::kNone) steps.emplace_back(watch, step);
    }
  }
  // A watch with a claimed step cannot reach OnDone before that step starts;
  // the others may be gone once mu_ is released.
  for (auto& [watch, step] : steps) watch->Start(step);
}

void HealthService::Forget(HealthWatch* watch) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.erase(watch);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* ctx, const HealthCheckRequest* req,
                                               HealthCheckResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    status = StatusOfLocked(req->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(ToGrpcStatus(absl::NotFoundError(absl::StrCat("unknown service '", req->service(), "'"))));
    return reactor;
  }
  resp->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(grpc::CallbackServerContext* /*ctx*/,
                                                                    const HealthCheckRequest* req) {
  auto* watch = new HealthWatch(this, req->service());
  HealthWatch::Step step;
  {
    std::lock_guard<std::mutex> lock(mu_);
    open_.insert(watch);
    step = watch->Update(StatusOfLocked(watch->name()), shut_down_);
  }
  watch->Start(step);
  return watch;
}

}  // namespace magma::api
