#include "service.h"

#include <atomic>
#include <cmath>
#include <deque>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "image_input.h"
#include "magma/agent/path_answer.h"
#include "magma/agent/trace_answer.h"
#include "magma/util/logging.h"
#include "status.h"

namespace magma::api {
namespace {

namespace tk = magma::tokenizer;

// ------------------------------------------------------------ call plumbing

// What every call tracks: when it arrived, its deadline, metrics, and the
// link from client cancellation to the engine request. Thread-safe.
//
// A call is deleted when its last reference goes: gRPC's (released in
// OnDone) and, while it submits the call's engine request, the worker's. The
// engine may finish the request, and gRPC the call, before Submit returns;
// the worker still attaches the request's handle to the call afterwards.
class CallState {
 public:
  virtual ~CallState() = default;
  CallState(grpc::CallbackServerContext* ctx, const char* method, Metrics* metrics)
      : received_(absl::Now()), method_(method), metrics_(metrics) {
    const auto d = ctx->deadline();
    if (d < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) deadline_ = absl::FromChrono(d);
  }
  // Ends the call with `s` (not OK).
  virtual void Fail(const absl::Status& s) = 0;
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // The engine request of this call; cancelled at once if the client already left.
  void Attach(std::shared_ptr<engine::RequestHandle> h) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(h);
    if (cancelled_) handle_->Cancel();
  }
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (handle_) handle_->Cancel();
  }
  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  void Record(const absl::Status& s) const {
    if (metrics_ != nullptr) {
      metrics_->RecordCall(method_, absl::StatusCodeToString(s.code()), absl::ToDoubleSeconds(absl::Now() - received_));
    }
  }
  void Generated(const engine::Timings& t) const {
    if (metrics_ != nullptr) metrics_->RecordGeneration(t);
  }
  absl::Time received() const { return received_; }
  absl::Time deadline() const { return deadline_; }

 private:
  std::atomic<int> refs_{1};  // gRPC's until OnDone
  mutable std::mutex mu_;
  std::shared_ptr<engine::RequestHandle> handle_;  // guarded by mu_
  bool cancelled_ = false;                         // guarded by mu_
  const absl::Time received_;
  absl::Time deadline_ = absl::InfiniteFuture();
  const char* method_;
  Metrics* metrics_;
};

// A unary call answered later (by the engine thread or a worker).
class UnaryCall final : public grpc::ServerUnaryReactor, public CallState {
 public:
  UnaryCall(grpc::CallbackServerContext* ctx, const char* method, Metrics* metrics) : CallState(ctx, method, metrics) {}
  void Done(const absl::Status& s) {
    Record(s);
    Finish(ToGrpcStatus(s));
  }
  void Fail(const absl::Status& s) override { Done(s); }
  void OnCancel() override { Cancel(); }
  void OnDone() override { Unref(); }
};

// GenerateStream: one message per delta, written one at a time.
class StreamCall final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse>, public CallState {
 public:
  StreamCall(grpc::CallbackServerContext* ctx, Metrics* metrics) : CallState(ctx, "GenerateStream", metrics) {}
  // Queues a message; thread-safe.
  void Send(v1::GenerateStreamResponse msg) {
    if (cancelled()) return;
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(msg));
    if (!writing_) WriteNextLocked();
  }
  // Ends the call after the queued messages.
  void End(const absl::Status& s) {
    Record(s);
    std::lock_guard<std::mutex> lock(mu_);
    end_ = ToGrpcStatus(s);
    ended_ = true;
    if (!writing_) FinishLocked();
  }
  void Fail(const absl::Status& s) override { End(s); }
  void OnWriteDone(bool ok) override {
    if (!ok) Cancel();  // the client went away
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) queue_.clear();
    if (!queue_.empty()) {
      WriteNextLocked();
    } else if (ended_) {
      FinishLocked();
    }
  }
  void OnCancel() override { Cancel(); }
  void OnDone() override { Unref(); }

 private:
  void WriteNextLocked() {
    writing_ = true;
    StartWrite(&queue_.front());
  }
  void FinishLocked() {
    if (finished_) return;
    finished_ = true;
    Finish(end_);
  }
  std::mutex mu_;
  std::deque<v1::GenerateStreamResponse> queue_;  // guarded by mu_; front is in flight while writing_
  bool writing_ = false, ended_ = false, finished_ = false;  // guarded by mu_
  grpc::Status end_;                                         // guarded by mu_
};

// `job` as a worker thread runs it: a call whose client left or whose
// deadline passed while it waited ends without running it, and a library
// exception (OpenCV on an image it cannot handle) fails the call, as
// "<doing> failed: ...", instead of the process. Jobs throw, if at all,
// before they answer or submit.
std::function<void()> WorkerJob(CallState* call, const char* doing, std::function<void()> job) {
  return [call, doing, job = std::move(job)] {
    if (call->cancelled())
      return call->Fail(absl::CancelledError("the call was cancelled while it waited for a worker"));
    if (absl::Now() > call->deadline()) {
      return call->Fail(absl::DeadlineExceededError("the call's deadline passed while it waited for a worker"));
    }
    try {
      job();
    } catch (const std::exception& e) {
      call->Fail(absl::InternalError(absl::StrCat(doing, " failed: ", e.what())));
    }
  };
}

// Runs `job` (the call's decoding, preprocessing and submission) on a worker
// thread, as WorkerJob says. RESOURCE_EXHAUSTED at once when `max_waiting`
// calls already wait for a worker.
void RunOnWorker(ThreadPool* workers, int max_waiting, CallState* call, std::function<void()> job) {
  auto run = WorkerJob(call, "preparing the request", std::move(job));
  if (!workers->TryPost(std::move(run), static_cast<size_t>(max_waiting))) {
    call->Fail(absl::ResourceExhaustedError(
        absl::StrCat(max_waiting, " calls already wait for a worker thread (limits.max_waiting_calls); retry later")));
  }
}

// ------------------------------------------------------------ conversions

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

void FillTimings(const engine::Timings& t, absl::Time received, v1::Timings* out) {
  out->set_queue_ms(Ms(t.queue));
  out->set_preprocess_ms(Ms(t.preprocess));
  out->set_vision_ms(Ms(t.vision));
  out->set_prefill_ms(Ms(t.prefill));
  out->set_decode_ms(Ms(t.decode));
  out->set_total_ms(Ms(absl::Now() - received));
  out->set_prompt_tokens(t.prompt_tokens);
  out->set_output_tokens(t.output_tokens);
  out->set_vision_cache_hit(t.vision_cache_hits > 0 && t.vision_cache_misses == 0);
}

v1::FinishReason ToProto(engine::FinishReason r) {
  switch (r) {
    case engine::FinishReason::kStopToken: return v1::STOP;
    case engine::FinishReason::kStopString: return v1::STOP_STRING;
    case engine::FinishReason::kLength: return v1::LENGTH;
    case engine::FinishReason::kGrammar: return v1::GRAMMAR;
    default: return v1::FINISH_REASON_UNSPECIFIED;
  }
}

absl::StatusOr<engine::SamplingParams> ToSampling(const v1::SamplingParams& p, float default_temperature) {
  engine::SamplingParams s;
  s.temperature = p.has_temperature() ? p.temperature() : default_temperature;
  s.top_k = p.top_k();
  s.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  s.min_p = p.min_p();
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.0f;
  s.seed = p.seed();
  if (auto st = engine::ValidateSamplingParams(s); !st.ok()) return st;
  return s;
}

bool Finite(double v) { return std::isfinite(v); }

// Request ids: unique within this server process.
std::string NextRequestId() {
  static std::atomic<uint64_t> next{1};
  return absl::StrCat("req-", next++);
}

absl::StatusOr<vision::PixelBox> ToBox(const v1::BoxPx& b, const std::string& what) {
  if (!Finite(b.x1()) || !Finite(b.y1()) || !Finite(b.x2()) || !Finite(b.y2())) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has a non-finite coordinate"));
  }
  if (b.x1() < 0 || b.y1() < 0) return absl::InvalidArgumentError(absl::StrCat(what, " has a negative coordinate"));
  if (b.x1() > b.x2() || b.y1() > b.y2()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is inverted (x1 > x2 or y1 > y2)"));
  }
  return vision::PixelBox{b.x1(), b.y1(), b.x2(), b.y2()};
}

// Trace points a RenderOverlay call may draw in all.
constexpr int64_t kMaxOverlayTracePoints = 100000;

// A path point given in the image's pixels (`px`, preferred when set, within
// the image) or normalised (`norm`, within [0, 1]), normalised.
absl::StatusOr<vision::NormPoint> PathPointNorm(const v1::PathPoint& p, const vision::ImageFrame& frame,
                                                const std::string& what) {
  if (p.has_px()) {
    if (!Finite(p.px().x()) || !Finite(p.px().y())) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".px has a non-finite coordinate"));
    }
    const vision::ImageSize size = frame.original();
    if (!(p.px().x() >= 0 && p.px().x() <= size.width && p.px().y() >= 0 && p.px().y() <= size.height)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ".px (", p.px().x(), ", ", p.px().y(), ") is outside the ",
                                                     size.width, "x", size.height, " image"));
    }
    return frame.ToNorm(vision::PixelPoint{p.px().x(), p.px().y()});
  }
  if (!p.has_norm()) return absl::InvalidArgumentError(absl::StrCat(what, " sets neither px nor norm"));
  const double x = p.norm().x(), y = p.norm().y();
  if (!(x >= 0 && x <= 1 && y >= 0 && y <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ".norm (", x, ", ", y, ") is outside [0, 1]"));
  }
  return vision::NormPoint{x, y};
}

// `what` ("the overlay") names the image in the message when its PNG is
// larger than a response may be: refused here, precisely, rather than by
// gRPC as a message over the send limit.
absl::StatusOr<std::string> EncodePng(const cv::Mat& rgb, int64_t max_bytes, absl::string_view what) {
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<uchar> png;
  if (!cv::imencode(".png", bgr, png)) return absl::InternalError("PNG encoding failed");
  if (static_cast<int64_t>(png.size()) > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(what, " is a PNG of ", png.size(),
                                                     " bytes; responses hold at most ", max_bytes,
                                                     " (grpc.max_send_message_bytes)"));
  }
  return std::string(png.begin(), png.end());
}

// `ids` with their log-probabilities (`logprobs`, one per id) and, with
// `with_top`, the most likely alternatives.
void FillTokens(const std::vector<int32_t>& ids, const std::vector<engine::SampledToken>& logprobs,
                const tk::Tokenizer& tok, bool with_top, google::protobuf::RepeatedPtrField<v1::GeneratedToken>* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    auto* t = out->Add();
    t->set_token_id(ids[i]);
    t->set_token(tok.TokenText(ids[i]));
    if (i < logprobs.size()) {
      t->set_logprob(logprobs[i].logprob);
      if (with_top) {
        for (const auto& alt : logprobs[i].top) {
          auto* a = t->add_top();
          a->set_token_id(alt.id);
          a->set_token(tok.TokenText(alt.id));
          a->set_logprob(alt.logprob);
        }
      }
    }
  }
}

float SumLogprob(const engine::GenerationResult& r) {
  float s = 0;
  for (const auto& t : r.logprobs) s += t.logprob;
  return s;
}

// Images of a request, decoded under the limits.
absl::StatusOr<std::vector<cv::Mat>> DecodeImages(const google::protobuf::RepeatedPtrField<v1::Image>& images,
                                                  const Limits& limits, const char* field) {
  if (images.size() > limits.max_images_per_request) {
    return absl::ResourceExhaustedError(absl::StrCat(images.size(), " images; at most ", limits.max_images_per_request));
  }
  ImageLimits il{limits.max_image_bytes, limits.max_image_pixels};
  std::vector<cv::Mat> out;
  for (int i = 0; i < images.size(); ++i) {
    auto m = DecodeClientImage(images[i], il, absl::StrCat(field, "[", i, "]"));
    if (!m.ok()) return m.status();
    out.push_back(*std::move(m));
  }
  return out;
}

absl::StatusOr<cv::Mat> DecodeOne(const v1::Image& image, const Limits& limits, const char* field) {
  return DecodeClientImage(image, ImageLimits{limits.max_image_bytes, limits.max_image_pixels}, field);
}

// Gives `request` to the engine and attaches its handle to `call`, which is
// held while Submit runs (see CallState); `refuse` ends the call when the
// engine refuses the request.
template <typename Refuse>
void SubmitHeld(CallState* call, const Backend& backend, engine::GenerationRequest request,
                engine::RequestCallbacks callbacks, Refuse refuse) {
  call->Ref();
  auto h = backend.engine->Submit(std::move(request), std::move(callbacks));
  if (h.ok()) {
    call->Attach(*h);
  } else {
    refuse(h.status());
  }
  call->Unref();
}

// Gives the response its id and the request to the engine; the call ends in
// the callbacks (or here, when the engine refuses the request).
template <typename Response>
void SubmitUnary(UnaryCall* call, const Backend& backend, engine::GenerationRequest request,
                 engine::RequestCallbacks callbacks, Response* resp) {
  resp->set_request_id(NextRequestId());
  SubmitHeld(call, backend, std::move(request), std::move(callbacks), [call](const absl::Status& s) { call->Done(s); });
}

absl::StatusOr<int32_t> MaxTokens(int32_t requested, int32_t fallback, const Limits& limits) {
  if (requested < 0) return absl::InvalidArgumentError("max_tokens must be >= 0 (0 = default)");
  // The default never exceeds the server's limit; a client's number may not.
  const int32_t n = requested == 0 ? std::min(fallback, limits.max_tokens) : requested;
  if (n > limits.max_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("max_tokens ", n, " exceeds the limit of ", limits.max_tokens));
  }
  return n;
}

// Refused before tokenizing: encoding a text far larger than any context
// only to count its tokens would hold a worker thread for seconds.
absl::Status CheckTextBytes(size_t bytes, const Limits& limits, absl::string_view what) {
  if (bytes > static_cast<uint64_t>(limits.max_text_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, " has ", bytes, " bytes of text; at most ", limits.max_text_bytes));
  }
  return absl::OkStatus();
}

// Equal strings, compared in a time that does not tell how long a prefix of
// the secret a guess got right.
bool SameSecret(absl::string_view given, absl::string_view secret) {
  if (given.size() != secret.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ secret[i]);
  return diff == 0;
}

absl::Status CheckInstruction(const std::string& instruction, const Limits& limits) {
  if (instruction.empty()) return absl::InvalidArgumentError("instruction is empty");
  return CheckTextBytes(instruction.size(), limits, "the instruction");
}

}  // namespace

// ------------------------------------------------------------ state

void ServiceState::SetReady(std::shared_ptr<Backend> backend) {
  std::lock_guard<std::mutex> lock(mu_);
  backend_ = std::move(backend);
  phase_ = Phase::kServing;
}

void ServiceState::SetDraining() {
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = Phase::kDraining;
}

std::shared_ptr<Backend> ServiceState::backend() const {
  std::lock_guard<std::mutex> lock(mu_);
  return backend_;
}

bool ServiceState::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return phase_ == Phase::kDraining;
}

absl::StatusOr<std::shared_ptr<Backend>> ServiceState::Get() const {
  std::lock_guard<std::mutex> lock(mu_);
  switch (phase_) {
    case Phase::kLoading: return absl::UnavailableError("the model is still loading; retry later");
    case Phase::kDraining: return absl::UnavailableError("the server is shutting down");
    case Phase::kServing: break;
  }
  return backend_;
}

// ------------------------------------------------------------ service

AgentServiceImpl::AgentServiceImpl(const ServerOptions& options, const ServiceState* state, Metrics* metrics)
    : options_(options), state_(state), metrics_(metrics),
      workers_(std::make_unique<ThreadPool>(options.worker_threads)) {}

AgentServiceImpl::~AgentServiceImpl() = default;

absl::Status AgentServiceImpl::Authorize(grpc::CallbackServerContext* ctx) const {
  if (options_.bearer_token.empty()) return absl::OkStatus();
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  const std::string value(it->second.data(), it->second.size());
  if (!SameSecret(value, "Bearer " + options_.bearer_token)) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

// Runs `work` on a worker thread unless the call is refused up front.
#define MAGMA_BEGIN_CALL(call, ctx)                        \
  if (auto auth = Authorize(ctx); !auth.ok()) {            \
    call->Done(auth);                                      \
    return call;                                           \
  }                                                        \
  auto backend_or = state_->Get();                         \
  if (!backend_or.ok()) {                                  \
    call->Done(backend_or.status());                       \
    return call;                                           \
  }                                                        \
  std::shared_ptr<Backend> backend = *std::move(backend_or)

grpc::ServerUnaryReactor* AgentServiceImpl::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                         const v1::GetModelInfoRequest*, v1::ModelInfo* out) {
  auto* call = new UnaryCall(ctx, "GetModelInfo", metrics_);
  MAGMA_BEGIN_CALL(call, ctx);
  const ServingInfo& info = backend->info;
  out->set_model_name(info.model_name);
  out->set_architecture(info.architecture);
  out->set_dtype(info.dtype);
  out->set_vocab_size(info.vocab_size);
  out->set_max_context_tokens(info.max_context_tokens);
  out->set_num_parameters(info.num_parameters);
  out->set_image_crop_size(info.image_crop_size);
  out->set_max_crops_per_image(info.max_crops_per_image);
  out->set_image_tokens_per_crop(info.image_tokens_per_crop);
  out->set_server_version(ServerVersion());
  out->set_chat_format(tk::ChatFormatName(backend->tasks.chat_format));
  if (backend->tasks.dataset_statistics.has_value()) {
    for (const auto& k : backend->tasks.dataset_statistics->keys()) out->add_unnorm_keys(k);
  }
  out->add_tasks("generate");
  out->add_tasks("click");
  if (backend->tasks.action_codec.has_value()) out->add_tasks("act");
  out->add_tasks("trace");
  auto* l = out->mutable_limits();
  l->set_max_request_bytes(options_.max_receive_message_bytes);
  l->set_max_image_bytes(options_.limits.max_image_bytes);
  l->set_max_image_pixels(options_.limits.max_image_pixels);
  l->set_max_images_per_request(options_.limits.max_images_per_request);
  l->set_max_elements(std::min<int32_t>(options_.limits.max_elements, agent::kMaxClickMarks));
  l->set_max_tokens(options_.limits.max_tokens);
  l->set_max_queue(info.max_queue);
  l->set_max_batch(info.max_batch);
  l->set_max_waiting_calls(options_.limits.max_waiting_calls);
  l->set_max_text_bytes(options_.limits.max_text_bytes);
  l->set_max_stop_strings(options_.limits.max_stop_strings);
  l->set_max_choices(options_.limits.max_choices);
  l->set_max_response_bytes(options_.max_send_message_bytes);
  call->Done(absl::OkStatus());
  return call;
}

namespace {

// Shared by Generate and GenerateStream: validation and the engine request.
absl::StatusOr<engine::GenerationRequest> BuildTextRequest(const v1::GenerateRequest& req, const Backend& backend,
                                                           const Limits& limits, absl::Time deadline,
                                                           absl::Time received) {
  if (!req.prompt().empty() && req.messages_size() > 0) {
    return absl::InvalidArgumentError("set either prompt or messages, not both");
  }
  if (req.prompt().empty() && req.messages_size() == 0) return absl::InvalidArgumentError("prompt is empty");
  if (req.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", limits.max_stop_strings, " stop strings"));
  }
  if (req.choices_size() > limits.max_choices) {
    return absl::ResourceExhaustedError(absl::StrCat("at most ", limits.max_choices, " choices"));
  }
  if (req.top_logprobs() < 0 || req.top_logprobs() > 20) {
    return absl::InvalidArgumentError("top_logprobs must be in 0..20");
  }
  size_t text_bytes = req.prompt().size() + req.system_prompt().size();
  for (const auto& m : req.messages()) text_bytes += m.role().size() + m.content().size();
  for (const auto& s : req.stop()) text_bytes += s.size();
  for (const auto& c : req.choices()) text_bytes += c.size();
  if (auto s = CheckTextBytes(text_bytes, limits, "the request"); !s.ok()) return s;
  auto images = DecodeImages(req.images(), limits, "images");
  if (!images.ok()) return images.status();
  agent::TextTask task;
  task.images = *std::move(images);
  task.system_prompt = req.system_prompt();
  if (!req.prompt().empty()) {
    task.messages.push_back({"user", {tk::Untrusted(req.prompt())}});
  }
  for (const auto& m : req.messages()) task.messages.push_back({m.role(), {tk::Untrusted(m.content())}});
  for (const auto& s : req.stop()) task.stop_strings.push_back(s);
  for (const auto& c : req.choices()) task.choices.push_back(c);
  auto sampling = ToSampling(req.sampling(), 1.0f);
  if (!sampling.ok()) return sampling.status();
  task.knobs.sampling = *sampling;
  task.knobs.sampling.top_logprobs = req.top_logprobs();
  // With choices the default is what the longest one can take (a token
  // holds at least one byte) and its end token, so that a short answer fits
  // a context with little room left.
  int32_t default_tokens = 256;
  if (req.choices_size() > 0) {
    size_t longest = 0;
    for (const auto& c : req.choices()) longest = std::max(longest, c.size());
    default_tokens = static_cast<int32_t>(std::min<size_t>(256, longest + 1));
  }
  auto max_tokens = MaxTokens(req.max_tokens(), default_tokens, limits);
  if (!max_tokens.ok()) return max_tokens.status();
  task.knobs.max_new_tokens = *max_tokens;
  // A default budget is cut to the context, unless a cut would leave half a choice.
  task.knobs.fit_context = req.max_tokens() == 0 && req.choices_size() == 0;
  task.knobs.deadline = deadline;
  auto r = agent::PrepareText(backend.tasks, task);
  if (!r.ok()) return r.status();
  r->preprocess_time = absl::Now() - received;
  return r;
}

}  // namespace

grpc::ServerUnaryReactor* AgentServiceImpl::Generate(grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req,
                                                     v1::GenerateResponse* resp) {
  auto* call = new UnaryCall(ctx, "Generate", metrics_);
  MAGMA_BEGIN_CALL(call, ctx);
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, resp, backend] {
    auto r = BuildTextRequest(*req, *backend, options_.limits, call->deadline(), call->received());
    if (!r.ok()) return call->Done(r.status());
    const bool tokens = req->return_tokens(), top = req->top_logprobs() > 0;
    engine::RequestCallbacks cb;
    cb.on_done = [call, resp, backend, tokens, top](engine::GenerationResult result) {
      call->Generated(result.timings);
      if (!result.status.ok()) return call->Done(result.status);
      resp->set_text(result.text);
      resp->set_finish_reason(ToProto(result.finish_reason));
      if (tokens) FillTokens(result.token_ids, result.logprobs, *backend->tasks.tokenizer, top, resp->mutable_tokens());
      FillTimings(result.timings, call->received(), resp->mutable_timings());
      call->Done(absl::OkStatus());
    };
    SubmitUnary(call, *backend, *std::move(r), std::move(cb), resp);
  });
  return call;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* AgentServiceImpl::GenerateStream(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  auto* call = new StreamCall(ctx, metrics_);
  if (auto auth = Authorize(ctx); !auth.ok()) {
    call->End(auth);
    return call;
  }
  auto backend_or = state_->Get();
  if (!backend_or.ok()) {
    call->End(backend_or.status());
    return call;
  }
  std::shared_ptr<Backend> backend = *std::move(backend_or);
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, backend] {
    auto r = BuildTextRequest(*req, *backend, options_.limits, call->deadline(), call->received());
    if (!r.ok()) return call->End(r.status());
    r->stream = true;
    const bool tokens = req->return_tokens(), top = req->top_logprobs() > 0;
    auto id = std::make_shared<const std::string>(NextRequestId());
    engine::RequestCallbacks cb;
    cb.on_delta = [call, backend, tokens, top, id](const engine::StreamDelta& d) {
      v1::GenerateStreamResponse msg;
      msg.set_text_delta(d.text);
      msg.set_request_id(*id);
      if (tokens) FillTokens(d.token_ids, d.logprobs, *backend->tasks.tokenizer, top, msg.mutable_tokens());
      call->Send(std::move(msg));
    };
    cb.on_done = [call, id](engine::GenerationResult result) {
      call->Generated(result.timings);
      if (!result.status.ok()) return call->End(result.status);
      v1::GenerateStreamResponse last;
      last.set_finish_reason(ToProto(result.finish_reason));
      last.set_request_id(*id);
      FillTimings(result.timings, call->received(), last.mutable_timings());
      call->Send(std::move(last));
      call->End(absl::OkStatus());
    };
    SubmitHeld(call, *backend, *std::move(r), std::move(cb), [call](const absl::Status& s) { call->End(s); });
  });
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Click(grpc::CallbackServerContext* ctx, const v1::ClickRequest* req,
                                                  v1::ClickResponse* resp) {
  auto* call = new UnaryCall(ctx, "Click", metrics_);
  MAGMA_BEGIN_CALL(call, ctx);
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, resp, backend] {
    const Limits& limits = options_.limits;
    if (auto s = CheckInstruction(req->instruction(), limits); !s.ok()) return call->Done(s);
    if (req->elements_size() > limits.max_elements) {
      return call->Done(absl::ResourceExhaustedError(
          absl::StrCat(req->elements_size(), " elements; at most ", limits.max_elements)));
    }
    if (req->mark_base() < 0) return call->Done(absl::InvalidArgumentError("mark_base must be >= 0"));
    if (!v1::MarkStyle_IsValid(req->mark_style())) return call->Done(absl::InvalidArgumentError("unknown mark_style"));
    auto shot = DecodeOne(req->screenshot(), limits, "screenshot");
    if (!shot.ok()) return call->Done(shot.status());
    agent::ClickTask task;
    task.screenshot = *shot;
    task.instruction = req->instruction();
    for (int i = 0; i < req->elements_size(); ++i) {
      auto b = ToBox(req->elements(i).box(), absl::StrCat("elements[", i, "].box"));
      if (!b.ok()) return call->Done(b.status());
      task.boxes.push_back(*b);
    }
    task.som.mark_base = req->mark_base();
    task.som.style = req->mark_style() == v1::MARK_STYLE_OMNIPARSER ? vision::SomStyle::kOmniParser
                                                                     : vision::SomStyle::kMagma;
    task.constrain_to_marks = !req->free_answer();
    auto sampling = ToSampling(req->sampling(), 0.0f);
    if (!sampling.ok()) return call->Done(sampling.status());
    task.knobs.sampling = *sampling;
    task.knobs.max_new_tokens = std::min(64, options_.limits.max_tokens);
    task.knobs.fit_context = true;
    task.knobs.deadline = call->deadline();
    auto prepared = agent::PrepareClick(backend->tasks, std::move(task));
    if (!prepared.ok()) return call->Done(prepared.status());
    auto p = std::make_shared<agent::PreparedClick>(*std::move(prepared));
    // Candidates as the model saw them.
    for (size_t i = 0; i < p->marks.size(); ++i) {
      auto* e = resp->add_candidates();
      const auto& b = p->marks[i].box;
      e->mutable_box()->set_x1(b.x1);
      e->mutable_box()->set_y1(b.y1);
      e->mutable_box()->set_x2(b.x2);
      e->mutable_box()->set_y2(b.y2);
      if (static_cast<int>(i) < req->elements_size()) {
        e->set_text(req->elements(i).text());
        e->set_type(req->elements(i).type());
        e->set_interactable(req->elements(i).interactable());
      } else {
        e->set_type("proposed");
        e->set_interactable(true);
      }
    }
    if (req->return_som_image()) {
      auto png = EncodePng(p->som_image, options_.max_send_message_bytes, "the SoM image");
      if (!png.ok()) return call->Done(png.status());
      resp->set_som_image_png(*std::move(png));
    }
    engine::GenerationRequest r = p->request;
    r.preprocess_time = absl::Now() - call->received();
    engine::RequestCallbacks cb;
    cb.on_done = [call, resp, p](engine::GenerationResult result) {
      call->Generated(result.timings);
      if (!result.status.ok()) return call->Done(result.status);
      resp->set_raw_text(result.text);
      resp->set_logprob(SumLogprob(result));
      FillTimings(result.timings, call->received(), resp->mutable_timings());
      resp->set_mark(-1);
      auto answer = agent::FinishClick(*p, result);
      if (answer.status().code() == absl::StatusCode::kResourceExhausted) return call->Done(answer.status());
      if (answer.ok()) {
        resp->set_found(true);
        resp->mutable_click_px()->set_x(answer->click.x);
        resp->mutable_click_px()->set_y(answer->click.y);
        resp->mutable_click_norm()->set_x(answer->click_norm.x);
        resp->mutable_click_norm()->set_y(answer->click_norm.y);
        switch (answer->rule) {
          case agent::UiRule::kMark: resp->set_rule(v1::MARK); break;
          case agent::UiRule::kMilliBox: resp->set_rule(v1::BOX_1000); break;
          case agent::UiRule::kPoint: resp->set_rule(v1::POINT_NORM); break;
          case agent::UiRule::kNormBox: resp->set_rule(v1::BOX_NORM); break;
        }
        if (answer->mark.has_value()) {
          resp->set_mark(*answer->mark);
          for (size_t i = 0; i < p->marks.size(); ++i) {
            if (p->marks[i].id == *answer->mark) *resp->mutable_element() = resp->candidates(static_cast<int>(i));
          }
        }
      }
      call->Done(absl::OkStatus());
    };
    SubmitUnary(call, *backend, std::move(r), std::move(cb), resp);
  });
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Act(grpc::CallbackServerContext* ctx, const v1::ActRequest* req,
                                                v1::ActResponse* resp) {
  auto* call = new UnaryCall(ctx, "Act", metrics_);
  resp->set_received_unix_ns(absl::ToUnixNanos(call->received()));
  MAGMA_BEGIN_CALL(call, ctx);
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, resp, backend] {
    if (auto s = CheckInstruction(req->instruction(), options_.limits); !s.ok()) return call->Done(s);
    auto image = DecodeOne(req->image(), options_.limits, "image");
    if (!image.ok()) return call->Done(image.status());
    agent::ActTask task;
    task.image = *image;
    task.instruction = req->instruction();
    task.unnorm_key = req->unnorm_key();
    if (req->has_statistics()) {
      agent::ActionStatistics s;
      s.q01.assign(req->statistics().q01().begin(), req->statistics().q01().end());
      s.q99.assign(req->statistics().q99().begin(), req->statistics().q99().end());
      s.mask.assign(req->statistics().mask().begin(), req->statistics().mask().end());
      // As in dataset_statistics.json: no mask unnormalises every dimension.
      if (s.mask.empty()) s.mask.assign(s.q01.size(), true);
      task.statistics = s;
    }
    auto sampling = ToSampling(req->sampling(), 0.7f);
    if (!sampling.ok()) return call->Done(sampling.status());
    task.knobs.sampling = *sampling;
    task.knobs.deadline = call->deadline();
    auto prepared = agent::PrepareAct(backend->tasks, std::move(task));
    if (!prepared.ok()) return call->Done(prepared.status());
    auto p = std::make_shared<agent::PreparedAct>(*std::move(prepared));
    engine::GenerationRequest r = p->request;
    r.preprocess_time = absl::Now() - call->received();
    engine::RequestCallbacks cb;
    cb.on_done = [call, resp, p, backend](engine::GenerationResult result) {
      call->Generated(result.timings);
      if (!result.status.ok()) return call->Done(result.status);
      auto out = agent::FinishAct(backend->tasks, *p, result);
      if (!out.ok()) return call->Done(out.status());
      for (int64_t id : out->token_ids) resp->add_action_token_ids(static_cast<int32_t>(id));
      for (int b : out->bins) resp->add_bins(b);
      for (double v : out->normalized) resp->add_normalized_action(v);
      for (double v : out->action) resp->add_action(v);
      resp->set_gripper(out->action.back());
      FillTimings(result.timings, call->received(), resp->mutable_timings());
      resp->set_completed_unix_ns(absl::ToUnixNanos(absl::Now()));
      call->Done(absl::OkStatus());
    };
    SubmitUnary(call, *backend, std::move(r), std::move(cb), resp);
  });
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Trace(grpc::CallbackServerContext* ctx, const v1::TraceRequest* req,
                                                  v1::TraceResponse* resp) {
  auto* call = new UnaryCall(ctx, "Trace", metrics_);
  MAGMA_BEGIN_CALL(call, ctx);
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, resp, backend] {
    if (auto s = CheckInstruction(req->instruction(), options_.limits); !s.ok()) return call->Done(s);
    if (!v1::TraceFormat_IsValid(req->format())) return call->Done(absl::InvalidArgumentError("unknown format"));
    auto image = DecodeOne(req->image(), options_.limits, "image");
    if (!image.ok()) return call->Done(image.status());
    agent::TraceTask task;
    task.image = *image;
    task.instruction = req->instruction();
    task.format = req->format() == v1::HAMSTER_PATH ? agent::TraceFormat::kHamsterPath : agent::TraceFormat::kMagmaTom;
    for (int i = 0; i < req->marks_size(); ++i) {
      const auto& m = req->marks(i);
      if (!Finite(m.x()) || !Finite(m.y()) || m.x() < 0 || m.y() < 0) {
        return call->Done(absl::InvalidArgumentError(absl::StrCat("marks[", i, "] is not a point inside the image")));
      }
      task.marks.push_back({m.x(), m.y()});
    }
    task.constrain_output = !req->free_answer();
    task.steps = req->steps() == 0 ? 16 : req->steps();
    task.speed = req->speed() == 0 ? 8 : req->speed();
    auto sampling = ToSampling(req->sampling(), 0.0f);
    if (!sampling.ok()) return call->Done(sampling.status());
    task.knobs.sampling = *sampling;
    task.knobs.max_new_tokens = 512;
    task.knobs.fit_context = true;
    task.knobs.deadline = call->deadline();
    auto prepared = agent::PrepareTrace(backend->tasks, std::move(task));
    if (!prepared.ok()) return call->Done(prepared.status());
    auto p = std::make_shared<agent::PreparedTrace>(*std::move(prepared));
    engine::GenerationRequest r = p->request;
    r.max_new_tokens = std::min(r.max_new_tokens, options_.limits.max_tokens);
    r.preprocess_time = absl::Now() - call->received();
    const bool overlay = req->return_overlay();
    // Calls end before the service goes (gRPC's shutdown waits for them),
    // and the pool runs what was posted before it joins.
    ThreadPool* workers = workers_.get();
    const int64_t max_png = options_.max_send_message_bytes;
    engine::RequestCallbacks cb;
    cb.on_done = [call, resp, p, overlay, workers, max_png](engine::GenerationResult result) {
      call->Generated(result.timings);
      if (!result.status.ok()) return call->Done(result.status);
      resp->set_raw_text(result.text);
      resp->set_finish_reason(ToProto(result.finish_reason));
      FillTimings(result.timings, call->received(), resp->mutable_timings());
      auto out = agent::FinishTrace(*p, result);
      if (out.status().code() == absl::StatusCode::kResourceExhausted) return call->Done(out.status());
      if (!out.ok()) {
        resp->set_parse_error(std::string(out.status().message()));
        return call->Done(absl::OkStatus());
      }
      const auto& frame = *p->frame;
      for (const auto& t : out->traces) {
        auto* mt = resp->add_traces();
        mt->set_mark(t.mark);
        for (size_t i = 0; i < t.points.size(); ++i) {
          v1::TracePoint* tp = i == 0 && t.has_start ? mt->mutable_start() : mt->add_future();
          tp->mutable_px()->set_x(t.points[i].x);
          tp->mutable_px()->set_y(t.points[i].y);
          const auto n = frame.ToNorm(t.points[i]);
          tp->mutable_norm()->set_x(n.x);
          tp->mutable_norm()->set_y(n.y);
        }
      }
      for (size_t i = 0; i < out->path.size(); ++i) {
        auto* pp = resp->add_path();
        pp->mutable_px()->set_x(out->path_pixels[i].x);
        pp->mutable_px()->set_y(out->path_pixels[i].y);
        pp->mutable_norm()->set_x(out->path[i].point.x);
        pp->mutable_norm()->set_y(out->path[i].point.y);
        pp->set_gripper_open(out->path[i].gripper == vision::Gripper::kOpen);
      }
      if (!overlay) return call->Done(absl::OkStatus());
      // Drawing on a large image and encoding it take long: on a worker
      // thread, so that the model thread goes on decoding the other calls.
      auto outcome = std::make_shared<const agent::TraceOutcome>(*std::move(out));
      // The call was admitted: its overlay is not refused for a full queue.
      workers->Post(WorkerJob(call, "drawing the overlay", [call, resp, p, outcome, max_png] {
        cv::Mat drawn = p->model_image.clone();
        if (p->format == agent::TraceFormat::kMagmaTom) {
          std::vector<std::vector<vision::PixelPoint>> lines;
          for (const auto& t : outcome->traces) lines.push_back(t.points);
          (void)vision::DrawTraces(lines, *p->frame, {}, &drawn);
        } else {
          (void)vision::DrawPath(outcome->path, {}, &drawn);
        }
        auto png = EncodePng(drawn, max_png, "the overlay");
        if (!png.ok()) return call->Done(png.status());
        resp->set_overlay_png(*std::move(png));
        call->Done(absl::OkStatus());
      }));
    };
    SubmitUnary(call, *backend, std::move(r), std::move(cb), resp);
  });
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::RenderOverlay(grpc::CallbackServerContext* ctx,
                                                          const v1::RenderOverlayRequest* req,
                                                          v1::RenderOverlayResponse* resp) {
  auto* call = new UnaryCall(ctx, "RenderOverlay", metrics_);
  if (auto auth = Authorize(ctx); !auth.ok()) {
    call->Done(auth);
    return call;
  }
  // No model needed: available while loading, not while draining.
  if (state_->draining()) {
    call->Done(absl::UnavailableError("the server is shutting down"));
    return call;
  }
  RunOnWorker(workers_.get(), options_.limits.max_waiting_calls, call, [this, call, req, resp] {
    auto image = DecodeOne(req->image(), options_.limits, "image");
    if (!image.ok()) return call->Done(image.status());
    cv::Mat drawn = image->clone();
    const auto frame = vision::ImageFrame::Identity({drawn.cols, drawn.rows});
    absl::Status s;
    switch (req->overlay_case()) {
      case v1::RenderOverlayRequest::kSom: {
        if (req->som().boxes_size() > options_.limits.max_elements) {
          return call->Done(absl::ResourceExhaustedError(
              absl::StrCat(req->som().boxes_size(), " boxes; at most ", options_.limits.max_elements)));
        }
        std::vector<vision::PixelBox> boxes;
        for (int i = 0; i < req->som().boxes_size(); ++i) {
          auto b = ToBox(req->som().boxes(i), absl::StrCat("som.boxes[", i, "]"));
          if (!b.ok()) return call->Done(b.status());
          boxes.push_back(*b);
        }
        if (!v1::MarkStyle_IsValid(req->som().style())) {
          return call->Done(absl::InvalidArgumentError("unknown som.style"));
        }
        vision::SomOptions o;
        o.mark_base = req->som().mark_base();
        o.style = req->som().style() == v1::MARK_STYLE_OMNIPARSER ? vision::SomStyle::kOmniParser
                                                                  : vision::SomStyle::kMagma;
        auto marks = vision::DrawSetOfMarks(boxes, frame, o, &drawn);
        if (!marks.ok()) return call->Done(marks.status());
        for (const auto& m : *marks) {
          auto* e = resp->add_marks();
          e->mutable_box()->set_x1(m.box.x1);
          e->mutable_box()->set_y1(m.box.y1);
          e->mutable_box()->set_x2(m.box.x2);
          e->mutable_box()->set_y2(m.box.y2);
          e->set_text(absl::StrCat(m.id));
        }
        break;
      }
      case v1::RenderOverlayRequest::kMarks: {
        // Drawing time grows with the marks and points (and the image's
        // size): bounded like a Trace answer's.
        int64_t trace_points = 0;
        for (const auto& t : req->marks().traces()) trace_points += t.points_size();
        if (req->marks().points_size() > agent::kMaxTraceMarks || req->marks().traces_size() > agent::kMaxTraceMarks ||
            trace_points > kMaxOverlayTracePoints) {
          return call->Done(absl::ResourceExhaustedError(
              absl::StrCat(req->marks().points_size(), " marks and ", req->marks().traces_size(), " traces of ",
                           trace_points, " points; at most ", agent::kMaxTraceMarks, " marks, ", agent::kMaxTraceMarks,
                           " traces and ", kMaxOverlayTracePoints, " trace points")));
        }
        std::vector<vision::PointMark> marks;
        for (int i = 0; i < req->marks().points_size(); ++i) {
          const auto& p = req->marks().points(i);
          marks.push_back({i + 1, {p.x(), p.y()}});
        }
        std::vector<std::vector<vision::PixelPoint>> traces;
        for (const auto& t : req->marks().traces()) {
          traces.emplace_back();
          for (const auto& p : t.points()) traces.back().push_back({p.x(), p.y()});
        }
        s = vision::DrawTraces(traces, frame, {}, &drawn);
        if (s.ok()) s = vision::DrawPointMarks(marks, frame, &drawn);
        break;
      }
      case v1::RenderOverlayRequest::kPath: {
        std::vector<vision::PathWaypoint> path;
        if (!req->path().answer().empty()) {
          auto parsed = agent::ParsePathAnswer(req->path().answer());
          if (!parsed.ok())
            return call->Done(absl::InvalidArgumentError(absl::StrCat("path.answer: ", parsed.status().message())));
          path = *parsed;
        } else {
          if (req->path().points_size() > agent::kMaxPathPoints) {
            return call->Done(absl::ResourceExhaustedError(
                absl::StrCat(req->path().points_size(), " path points; at most ", agent::kMaxPathPoints)));
          }
          for (int i = 0; i < req->path().points_size(); ++i) {
            const auto& p = req->path().points(i);
            auto point = PathPointNorm(p, frame, absl::StrCat("path.points[", i, "]"));
            if (!point.ok()) return call->Done(point.status());
            path.push_back({*point, p.gripper_open() ? vision::Gripper::kOpen : vision::Gripper::kClosed});
          }
        }
        s = vision::DrawPath(path, {}, &drawn);
        break;
      }
      case v1::RenderOverlayRequest::OVERLAY_NOT_SET:
        s = absl::InvalidArgumentError("set one of som, marks or path");
        break;
    }
    if (!s.ok()) return call->Done(s);
    auto png = EncodePng(drawn, options_.max_send_message_bytes, "the overlay");
    if (!png.ok()) return call->Done(png.status());
    resp->set_png(*std::move(png));
    call->Done(absl::OkStatus());
  });
  return call;
}

}  // namespace magma::api
