#include "magma/engine/engine.h"

#include <algorithm>
#include <list>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "magma/util/logging.h"

namespace magma::engine {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStopToken: return "stop_token";
    case FinishReason::kStopString: return "stop_string";
    case FinishReason::kLength: return "length";
    case FinishReason::kGrammar: return "grammar";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kDeadline: return "deadline";
    case FinishReason::kError: return "error";
  }
  return "?";
}

// LRU by key, bounded in bytes (T has bytes()). Engine thread only.
template <typename T>
class LruCache {
 public:
  explicit LruCache(int64_t limit) : limit_(limit) {}
  std::shared_ptr<const T> Get(const std::string& key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }
  void Put(const std::string& key, std::shared_ptr<const T> value) {
    if (value->bytes() > limit_ || index_.count(key)) return;
    bytes_ += value->bytes();
    lru_.emplace_front(key, std::move(value));
    index_[key] = lru_.begin();
    while (bytes_ > limit_ && !lru_.empty()) {
      bytes_ -= lru_.back().second->bytes();
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  int64_t entries() const { return static_cast<int64_t>(lru_.size()); }
  // Whether Put would keep a value of `bytes` under `key`: no copy need be
  // made for it otherwise.
  bool WouldKeep(const std::string& key, int64_t bytes) const { return bytes <= limit_ && !index_.count(key); }
  bool Contains(const std::string& key) const { return index_.count(key) > 0; }

 private:
  int64_t limit_, bytes_ = 0;
  std::list<std::pair<std::string, std::shared_ptr<const T>>> lru_;
  std::unordered_map<std::string, typename decltype(lru_)::iterator> index_;
};

class Engine::VisionCache : public LruCache<ImageFeatures> {
 public:
  using LruCache::LruCache;
};

class Engine::PrefixCache : public LruCache<PrefixState> {
 public:
  using LruCache::LruCache;
};

struct Engine::Sequence {
  enum class State { kWaiting, kPrefill, kDecode, kDone };
  GenerationRequest req;
  RequestCallbacks cb;
  std::shared_ptr<RequestHandle> handle;
  State state = State::kWaiting;
  absl::Time submitted, admitted, first_token;
  int slot = -1;
  int64_t prompt_positions = 0, prefilled = 0;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<Constraint> constraint;
  std::vector<int32_t> history;
  int32_t pending = -1;  // fed at the next decode step
  GenerationResult result;
  std::unique_ptr<tokenizer::IncrementalDecoder> detok;
  size_t streamed_text = 0, streamed_tokens = 0;
  size_t max_stop_len = 0;
  // Prefix caching: the prompt up to its last image (its first prefix_len
  // ids), keyed by content; set by Submit, on the caller's thread.
  std::string prefix_key;
  size_t prefix_len = 0;
  int64_t prefix_positions = 0;  // expanded positions of that prefix
  bool save_prefix = false;      // snapshot once the prefix is prefilled
};

namespace {

// Key of the prompt prefix that ends with the last image, when every image
// has a content key; empty otherwise (or when nothing would follow it).
std::string PrefixKey(const GenerationRequest& req, int32_t image_token, size_t* prefix_len) {
  if (req.images.empty()) return "";
  size_t last = 0;
  for (size_t i = 0; i < req.prompt_ids.size(); ++i) {
    if (req.prompt_ids[i] == image_token) last = i;
  }
  if (last + 1 >= req.prompt_ids.size()) return "";
  std::string key;
  for (const auto& img : req.images) {
    if (img.cache_key.empty()) return "";
    absl::StrAppend(&key, img.cache_key, "|");
  }
  absl::StrAppend(&key, absl::StrJoin(req.prompt_ids.begin(), req.prompt_ids.begin() + last + 1, ","));
  *prefix_len = last + 1;
  return key;
}

}  // namespace

Engine::Engine(std::unique_ptr<ModelRunner> runner, std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
               const EngineOptions& options)
    : runner_(std::move(runner)),
      tokenizer_(std::move(tokenizer)),
      options_(options),
      capacity_(runner_->slot_capacity()),
      vocab_size_(runner_->vocab_size()),
      kv_bytes_per_position_(runner_->kv_bytes_total() /
                             std::max<int64_t>(1, int64_t{runner_->num_slots()} * runner_->slot_capacity())),
      vision_cache_(std::make_unique<VisionCache>(options.vision_cache_bytes)),
      prefix_cache_(std::make_unique<PrefixCache>(options.prefix_cache_bytes)) {
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    exit_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Engine::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = true;
}

EngineStats Engine::Stats() const {
  EngineStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.queued = static_cast<int64_t>(incoming_.size());
  }
  s.queued += n_waiting_.load();
  s.running = n_running_.load();
  s.kv_bytes_used = kv_used_.load();
  s.kv_bytes_total = runner_->kv_bytes_total();
  s.vision_cache_hits = cache_hits_.load();
  s.vision_cache_misses = cache_misses_.load();
  s.vision_cache_entries = cache_entries_.load();
  s.prompt_tokens = prompt_tokens_.load();
  s.output_tokens = output_tokens_.load();
  s.requests_finished = finished_.load();
  return s;
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(GenerationRequest req, RequestCallbacks cb) {
  if (req.prompt_ids.empty()) return absl::InvalidArgumentError("the prompt is empty");
  size_t image_tokens = 0;
  for (int32_t id : req.prompt_ids) {
    if (id == runner_->image_token_id()) {
      ++image_tokens;
    } else if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
    }
  }
  if (image_tokens != req.images.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", image_tokens, " image tokens for ",
                                                   req.images.size(), " images"));
  }
  int64_t positions = static_cast<int64_t>(req.prompt_ids.size()) - static_cast<int64_t>(image_tokens);
  for (const auto& img : req.images) {
    if (img.crops == nullptr || img.crops->num_crops() == 0) return absl::InvalidArgumentError("an image has no pixels");
    positions += runner_->ImageTokenCount(*img.crops);
  }
  if (auto s = ValidateSamplingParams(req.sampling); !s.ok()) return s;
  if (req.max_new_tokens < 1) return absl::InvalidArgumentError("max_new_tokens must be >= 1");
  if (req.fit_context && positions < capacity_) {
    const int64_t room = capacity_ - positions;
    // Refused before its prefill when even the shortest answer its grammar
    // allows does not fit what the context leaves.
    if (req.grammar != nullptr && room < req.max_new_tokens &&
        req.grammar->MinTokens(static_cast<int32_t>(room)) > room) {
      return absl::ResourceExhaustedError(absl::StrCat("the prompt (", positions, " positions) leaves ", room,
                                                       " of the context's ", capacity_,
                                                       " positions, too few for the shortest answer its grammar "
                                                       "allows"));
    }
    req.max_new_tokens = static_cast<int32_t>(std::min<int64_t>(req.max_new_tokens, room));
  }
  if (positions + req.max_new_tokens > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat("the prompt (", positions, " positions) plus max_new_tokens (",
                                                     req.max_new_tokens, ") exceeds the context of ", capacity_,
                                                     " positions"));
  }
  for (const auto& s : req.stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  for (int32_t id : req.allowed_token_ids) {
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("allowed token id ", id, " is outside the vocabulary"));
    }
  }
  auto seq = std::make_unique<Sequence>();
  seq->req = std::move(req);
  seq->cb = std::move(cb);
  seq->submitted = absl::Now();
  seq->prompt_positions = positions;
  if (options_.prefix_cache_bytes > 0) {
    seq->prefix_key = PrefixKey(seq->req, runner_->image_token_id(), &seq->prefix_len);
  }
  std::shared_ptr<RequestHandle> handle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the server is shutting down");
    // A request waits when the batch has no free place for it; at most
    // max_queue requests wait.
    const int64_t batch = std::min(options_.max_batch, runner_->num_slots());
    const int64_t free_places = std::max<int64_t>(0, batch - n_running_.load());
    if (static_cast<int64_t>(incoming_.size()) + n_waiting_.load() >= options_.max_queue + free_places) {
      return absl::ResourceExhaustedError(absl::StrCat("the request queue is full (", options_.max_queue,
                                                       " waiting); retry later"));
    }
    handle = std::make_shared<RequestHandle>(next_id_++);
    seq->handle = handle;
    incoming_.push_back(std::move(seq));
  }
  cv_.notify_one();
  return handle;
}

void Engine::Loop() {
  for (;;) {
    bool worked = Iterate();
    std::unique_lock<std::mutex> lock(mu_);
    if (exit_) break;
    if (!worked && incoming_.empty()) {
      // Idle: wake for new requests, or soon enough to honour deadlines.
      cv_.wait_for(lock, std::chrono::milliseconds(20), [this] { return exit_ || !incoming_.empty(); });
      if (exit_) break;
    }
  }
  // Fail whatever is left.
  std::deque<std::unique_ptr<Sequence>> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rest.swap(incoming_);
  }
  for (auto& s : rest) waiting_.push_back(std::move(s));
  const absl::Status gone = absl::UnavailableError("the server shut down before the request finished");
  for (auto& s : waiting_) Finish(s.get(), FinishReason::kError, gone);
  for (auto& s : running_) Finish(s.get(), FinishReason::kError, gone);
  waiting_.clear();
  running_.clear();
}

bool Engine::CutAtStopString(Sequence* seq, size_t before, const std::string& held) {
  if (seq->req.stop_strings.empty()) return false;
  std::string& text = seq->result.text;
  // A stop string may straddle the previous text's end; only the text from
  // there on (and what is held) is searched.
  const size_t from = before >= seq->max_stop_len ? before - seq->max_stop_len + 1 : 0;
  const std::string tail = text.substr(std::min(from, text.size())) + held;
  size_t cut = std::string::npos;
  for (const auto& s : seq->req.stop_strings) cut = std::min(cut, tail.find(s));
  if (cut == std::string::npos) return false;
  text.resize(std::min(from, text.size()));
  text.append(tail, 0, cut);
  return true;
}

void Engine::Finish(Sequence* seq, FinishReason reason, absl::Status status) {
  if (seq->state == Sequence::State::kDone) return;
  const absl::Time now = absl::Now();
  GenerationResult& r = seq->result;
  if (seq->detok != nullptr && reason != FinishReason::kStopString) {
    // What the decoder still held back (a cut character, text the space
    // clean-up waited on) is cut at a stop string whatever ended the
    // answer; an answer that ended by itself then ends on the stop string.
    const size_t before = r.text.size();
    r.text += seq->detok->Finish();
    if (CutAtStopString(seq, before, "") && (reason == FinishReason::kStopToken || reason == FinishReason::kLength)) {
      reason = FinishReason::kStopString;
    }
  }
  if (seq->req.stream && seq->cb.on_delta && (seq->streamed_text < r.text.size() ||
                                              seq->streamed_tokens < r.token_ids.size())) {
    StreamDelta d;
    d.token_ids.assign(r.token_ids.begin() + static_cast<std::ptrdiff_t>(seq->streamed_tokens), r.token_ids.end());
    d.logprobs.assign(r.logprobs.begin() + static_cast<std::ptrdiff_t>(seq->streamed_tokens), r.logprobs.end());
    d.text = r.text.substr(std::min(seq->streamed_text, r.text.size()));
    seq->cb.on_delta(d);
  }
  r.finish_reason = reason;
  r.status = std::move(status);
  Timings& t = r.timings;
  t.preprocess = seq->req.preprocess_time;
  t.prompt_tokens = static_cast<int32_t>(seq->prompt_positions);
  t.output_tokens = static_cast<int32_t>(r.token_ids.size());
  if (seq->admitted == absl::Time()) {
    t.queue = now - seq->submitted;
  } else {
    t.queue = seq->admitted - seq->submitted;
    if (seq->first_token != absl::Time()) {
      t.prefill = seq->first_token - seq->admitted - t.vision;
      t.decode = now - seq->first_token;
    } else {
      t.prefill = now - seq->admitted - t.vision;
    }
  }
  if (seq->slot >= 0) {
    runner_->ReleaseSlot(seq->slot);
    seq->slot = -1;
  }
  seq->state = Sequence::State::kDone;
  finished_++;
  if (seq->cb.on_done) seq->cb.on_done(std::move(r));
}

void Engine::AfterToken(Sequence* seq, int32_t token, const SampledToken& sampled) {
  GenerationResult& r = seq->result;
  r.token_ids.push_back(token);
  r.logprobs.push_back(sampled);
  seq->history.push_back(token);
  output_tokens_++;
  if (seq->first_token == absl::Time()) seq->first_token = absl::Now();
  if (seq->constraint != nullptr) {
    seq->constraint->Accept(token);
    if (seq->constraint->Finished()) {
      Finish(seq, FinishReason::kGrammar, absl::OkStatus());
      return;
    }
  }
  const auto& stops = seq->req.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    Finish(seq, FinishReason::kStopToken, absl::OkStatus());
    return;
  }
  if (seq->detok != nullptr) {
    const size_t before = r.text.size();
    r.text += seq->detok->Push(token);
    // The text the space clean-up still holds back ends the answer too if
    // it holds a stop string: it would be the answer's end if it stopped.
    if (CutAtStopString(seq, before, seq->req.stop_strings.empty() ? "" : seq->detok->Held())) {
      Finish(seq, FinishReason::kStopString, absl::OkStatus());
      return;
    }
  }
  if (static_cast<int32_t>(r.token_ids.size()) >= seq->req.max_new_tokens) {
    Finish(seq, FinishReason::kLength, absl::OkStatus());
    return;
  }
  if (seq->req.stream && seq->cb.on_delta) {
    // Hold back text that could still turn into a stop string, and never cut
    // a UTF-8 character.
    size_t safe = r.text.size();
    if (seq->max_stop_len > 0) safe = safe >= seq->max_stop_len - 1 ? safe - (seq->max_stop_len - 1) : 0;
    while (safe > seq->streamed_text && safe < r.text.size() &&
           (static_cast<unsigned char>(r.text[safe]) & 0xC0) == 0x80) {
      --safe;
    }
    if (safe > seq->streamed_text || seq->streamed_tokens < r.token_ids.size()) {
      StreamDelta d;
      d.token_ids.assign(r.token_ids.begin() + static_cast<std::ptrdiff_t>(seq->streamed_tokens), r.token_ids.end());
      d.logprobs.assign(r.logprobs.begin() + static_cast<std::ptrdiff_t>(seq->streamed_tokens), r.logprobs.end());
      if (safe > seq->streamed_text) d.text = r.text.substr(seq->streamed_text, safe - seq->streamed_text);
      seq->streamed_tokens = r.token_ids.size();
      seq->streamed_text = std::max(seq->streamed_text, safe);
      seq->cb.on_delta(d);
    }
  }
  seq->pending = token;
}

void Engine::SampleNext(Sequence* s, const float* logits) {
  const std::vector<int32_t>* allowed = nullptr;
  if (s->constraint != nullptr) {
    allowed = &s->constraint->Allowed();
    // A tokenizer may hold ids past the model's rows (added tokens); the
    // sampler skips those, so they cannot continue the answer either.
    const int32_t vocab = vocab_size_;
    if (std::none_of(allowed->begin(), allowed->end(), [vocab](int32_t id) { return id >= 0 && id < vocab; })) {
      // A whole answer with nothing to follow it (a tokenizer with no end
      // token) ends here, as it would with its end token.
      if (s->constraint->Complete()) {
        Finish(s, FinishReason::kGrammar, absl::OkStatus());
      } else {
        Finish(s, FinishReason::kError,
               absl::FailedPreconditionError("the output grammar cannot be satisfied with this vocabulary"));
      }
      return;
    }
  } else if (!s->req.allowed_token_ids.empty()) {
    allowed = &s->req.allowed_token_ids;
  }
  const SampledToken t = s->sampler->Sample(logits, vocab_size_, s->history, allowed);
  AfterToken(s, t.id, t);
}

int64_t Engine::EncodeCost(const Sequence& seq) const {
  if (seq.req.images.empty()) return 0;
  if (!seq.prefix_key.empty() && prefix_cache_->Contains(seq.prefix_key)) return 0;
  int64_t cost = 0;
  for (const auto& img : seq.req.images) {
    if (img.cache_key.empty() || !vision_cache_->Contains(img.cache_key)) cost += runner_->ImageTokenCount(*img.crops);
  }
  return cost;
}

bool Engine::Admit(Sequence* seq, int64_t* budget) {
  // Encoding images is prefill work: images that need more than what is
  // left of this iteration's budget wait for an iteration that starts with
  // the whole budget (where they go first, whatever their cost).
  if (*budget < options_.prefill_chunk_tokens && EncodeCost(*seq) > *budget) return false;
  const int slot = runner_->AllocateSlot();
  if (slot < 0) return false;  // capacity exhausted: stay queued
  seq->slot = slot;
  seq->admitted = absl::Now();
  seq->state = Sequence::State::kPrefill;
  seq->sampler = std::make_unique<Sampler>(seq->req.sampling);
  if (seq->req.grammar != nullptr) seq->constraint = seq->req.grammar->Start();
  seq->history = seq->req.prompt_ids;
  if (tokenizer_ != nullptr) {
    // A constrained answer reads as its grammar spelled it (a choice comes
    // back verbatim); free text is cleaned up as the tokenizer's decode does.
    seq->detok = std::make_unique<tokenizer::IncrementalDecoder>(
        tokenizer_.get(), /*skip_special=*/true,
        tokenizer_->clean_up_tokenization_spaces() && seq->req.grammar == nullptr);
  }
  for (const auto& s : seq->req.stop_strings) seq->max_stop_len = std::max(seq->max_stop_len, s.size());

  // A prompt whose prefix (up to the last image) is cached skips the images
  // and that part of the prefill.
  if (!seq->prefix_key.empty()) {
    if (auto cached = prefix_cache_->Get(seq->prefix_key)) {
      const std::vector<int32_t> rest(seq->req.prompt_ids.begin() + static_cast<std::ptrdiff_t>(seq->prefix_len),
                                      seq->req.prompt_ids.end());
      auto positions = runner_->BeginSequence(slot, rest, {}, cached.get());
      if (!positions.ok()) {
        Finish(seq, FinishReason::kError, positions.status());
        return true;
      }
      cache_hits_ += static_cast<int64_t>(seq->req.images.size());
      seq->result.timings.vision_cache_hits += static_cast<int32_t>(seq->req.images.size());
      seq->prompt_positions = cached->positions() + *positions;
      seq->prefilled = cached->positions();
      prompt_tokens_ += seq->prompt_positions;  // the whole prompt, as its timings report it
      return true;
    }
  }
  // Images: from the cache or encoded now.
  std::vector<std::shared_ptr<const ImageFeatures>> features;
  const absl::Time v0 = absl::Now();
  int64_t image_positions = 0;
  for (const auto& img : seq->req.images) {
    std::shared_ptr<const ImageFeatures> f;
    if (!img.cache_key.empty()) f = vision_cache_->Get(img.cache_key);
    if (f != nullptr) {
      cache_hits_++;
      seq->result.timings.vision_cache_hits++;
    } else {
      cache_misses_++;
      seq->result.timings.vision_cache_misses++;
      auto encoded = runner_->EncodeImage(*img.crops);
      if (!encoded.ok()) {
        Finish(seq, FinishReason::kError, encoded.status());
        return true;
      }
      f = *encoded;
      *budget -= f->num_tokens();
      if (!img.cache_key.empty()) vision_cache_->Put(img.cache_key, f);
    }
    image_positions += f->num_tokens();
    features.push_back(std::move(f));
  }
  cache_entries_ = vision_cache_->entries();
  seq->result.timings.vision = absl::Now() - v0;
  auto positions = runner_->BeginSequence(slot, seq->req.prompt_ids, features, nullptr);
  if (!positions.ok()) {
    Finish(seq, FinishReason::kError, positions.status());
    return true;
  }
  seq->prompt_positions = *positions;
  prompt_tokens_ += *positions;
  if (!seq->prefix_key.empty()) {
    seq->prefix_positions =
        static_cast<int64_t>(seq->prefix_len) - static_cast<int64_t>(seq->req.images.size()) + image_positions;
    seq->save_prefix = true;
  }
  return true;
}

bool Engine::Iterate() {
  bool worked = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!incoming_.empty()) {
      waiting_.push_back(std::move(incoming_.front()));
      incoming_.pop_front();
    }
    // Counted as waiting from here, so that Submit's queue limit holds
    // while this iteration runs.
    n_waiting_ = static_cast<int64_t>(waiting_.size());
  }
  // Cancellations and deadlines, queued or running.
  const absl::Time now = absl::Now();
  auto expire = [&](Sequence* s) {
    if (s->handle->cancelled()) {
      Finish(s, FinishReason::kCancelled, absl::CancelledError("the request was cancelled"));
    } else if (now > s->req.deadline) {
      Finish(s, FinishReason::kDeadline, absl::DeadlineExceededError("the request's deadline passed"));
    }
  };
  for (auto& s : waiting_) expire(s.get());
  for (auto& s : running_) expire(s.get());

  // Prefill under the token budget: first the sequences already admitted,
  // then new admissions in arrival order.
  int64_t budget = options_.prefill_chunk_tokens;
  auto prefill = [&](Sequence* s) {
    int64_t n = std::min<int64_t>(std::max<int64_t>(budget, 1), s->prompt_positions - s->prefilled);
    // Stop at the end of a cacheable prefix so that it can be saved.
    if (s->save_prefix && s->prefilled < s->prefix_positions) n = std::min(n, s->prefix_positions - s->prefilled);
    auto logits = runner_->PrefillStep(s->slot, n);
    worked = true;
    if (!logits.ok()) {
      Finish(s, FinishReason::kError, logits.status());
      return;
    }
    budget -= n;
    s->prefilled += n;
    if (s->save_prefix && s->prefilled == s->prefix_positions) {
      s->save_prefix = false;
      // The snapshot is a copy of the prefix's KV: none is made when the
      // cache would not keep it (already there, as when two calls about one
      // image miss together, or larger than the whole cache).
      if (prefix_cache_->WouldKeep(s->prefix_key, s->prefix_positions * kv_bytes_per_position_)) {
        auto saved = runner_->SavePrefix(s->slot, s->prefix_positions);
        if (saved.ok()) prefix_cache_->Put(s->prefix_key, *saved);
      }
    }
    if (logits->empty()) return;
    s->state = Sequence::State::kDecode;
    SampleNext(s, logits->data());
  };
  for (auto& s : running_) {
    if (budget <= 0) break;
    if (s->state == Sequence::State::kPrefill) prefill(s.get());
  }
  while (budget > 0 && !waiting_.empty() && static_cast<int>(running_.size()) < options_.max_batch) {
    std::unique_ptr<Sequence>& front = waiting_.front();
    if (front->state == Sequence::State::kDone) {
      waiting_.pop_front();
      continue;
    }
    if (!Admit(front.get(), &budget)) break;
    worked = true;
    running_.push_back(std::move(front));
    waiting_.pop_front();
    PublishCounts();
    // Images that took the rest of the budget leave the prefill to the
    // next iteration.
    if (budget > 0 && running_.back()->state == Sequence::State::kPrefill) prefill(running_.back().get());
  }

  // One batched decode step for every sequence with a pending token.
  std::vector<Sequence*> batch;
  std::vector<int> slots;
  std::vector<int32_t> tokens;
  for (auto& s : running_) {
    if (s->state == Sequence::State::kDecode && s->pending >= 0) {
      batch.push_back(s.get());
      slots.push_back(s->slot);
      tokens.push_back(s->pending);
    }
  }
  if (!batch.empty()) {
    worked = true;
    auto logits = runner_->DecodeStep(slots, tokens);
    for (size_t b = 0; b < batch.size(); ++b) {
      Sequence* s = batch[b];
      s->pending = -1;
      if (!logits.ok()) {
        Finish(s, FinishReason::kError, logits.status());
        continue;
      }
      SampleNext(s, logits->data() + b * vocab_size_);
    }
  }

  // Drop finished sequences.
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [](const auto& s) { return s->state == Sequence::State::kDone; }),
                 running_.end());
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](const auto& s) { return s->state == Sequence::State::kDone; }),
                 waiting_.end());
  PublishCounts();
  kv_used_ = runner_->kv_bytes_used();
  return worked;
}

void Engine::PublishCounts() {
  // Under Submit's lock: it reads both counts together, and a request
  // moving from waiting to running between its two reads would count twice
  // as a free place.
  std::lock_guard<std::mutex> lock(mu_);
  n_waiting_ = static_cast<int64_t>(waiting_.size());
  n_running_ = static_cast<int64_t>(running_.size());
}

}  // namespace magma::engine
