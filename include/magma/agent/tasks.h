// Tasks as data: each kind of request (text, click, act, trace) is a prompt
// template + image preparation (overlays) + logits constraints + stop rule,
// turned into a plain engine::GenerationRequest, and an output parser that
// turns the engine's result into agent structures in original-image pixels.
// The decode loop never sees which task it runs.
//
// Threads: Prepare* and Finish* are pure functions of their arguments and
// the immutable TaskContext; call them from RPC or worker threads.
#ifndef MAGMA_AGENT_TASKS_H_
#define MAGMA_AGENT_TASKS_H_

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "absl/status/statusor.h"
#include "magma/agent/action_codec.h"
#include "magma/agent/trace_answer.h"
#include "magma/agent/ui_answer.h"
#include "magma/engine/request.h"
#include "magma/tokenizer/chat.h"
#include "magma/tokenizer/tokenizer.h"
#include "magma/vision/geometry.h"
#include "magma/vision/image.h"
#include "magma/vision/overlay.h"

namespace magma::agent {

// Compiled grammars by pattern (compiling the path grammar over a vocabulary
// takes seconds; the same patterns recur), and the patterns refused for
// their size, so that a repeated one is refused at once. At most
// `max_entries` entries whose tables take at most `max_bytes` in all (a
// Trace grammar over many marks and steps takes megabytes): a grammar that
// does not fit is compiled for each request that uses it, and one that
// would overflow the cache empties it first (as does a hit when the cached
// grammars' allowed-id lists have grown past the bound). Patterns are the
// keys: a cache serves one token table (one per TaskContext). Thread-safe.
class GrammarCache {
 public:
  explicit GrammarCache(size_t max_bytes = size_t{64} << 20, size_t max_entries = 256)
      : max_bytes_(max_bytes), max_entries_(max_entries) {}
  absl::StatusOr<std::shared_ptr<const engine::Grammar>> Get(const std::string& pattern,
                                                            std::shared_ptr<const engine::TokenTable> table);
  // The bytes the cached entries take now, as counted against max_bytes.
  size_t bytes() const;

 private:
  size_t BytesLocked() const;  // needs mu_

  const size_t max_bytes_, max_entries_;
  mutable std::mutex mu_;
  // guarded by mu_
  std::map<std::string, absl::StatusOr<std::shared_ptr<const engine::Grammar>>> grammars_;
};

// What tasks need to know about the served model. Immutable once built.
struct TaskContext {
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  tokenizer::ChatFormat chat_format = tokenizer::ChatFormat::kLlama3;
  bool image_start_end = false;   // config.json mm_use_image_start_end
  int32_t image_token_id = -1;    // the model's <image> id
  vision::AnyresOptions anyres;   // crop size, crop count, mean/std
  std::vector<int32_t> stop_ids;  // tokens that end an answer (eos, end of turn)
  std::shared_ptr<const engine::TokenTable> token_table;  // for grammars
  std::optional<ActionCodec> action_codec;  // absent when the vocabulary is too small
  std::optional<DatasetStatistics> dataset_statistics;
  int robot_image_size = 256;     // Act resizes the camera image to this square first
  std::shared_ptr<GrammarCache> grammars = std::make_shared<GrammarCache>();
  // The engine's context in positions (0: unknown). A prompt whose text has
  // more bytes than this many tokens can stand for is refused before it is
  // encoded: no tokenization could make it fit.
  int64_t context_positions = 0;
  size_t max_token_bytes = 0;  // Tokenizer::MaxBytesPerToken (0: no bound)
};

// Builds the context from a tokenizer and the model's facts. FAILED_PRECONDITION
// when the tokenizer has no <image> token matching `image_token_id`.
absl::StatusOr<TaskContext> MakeTaskContext(std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                                            int32_t image_token_id, bool image_start_end,
                                            const vision::AnyresOptions& anyres,
                                            std::optional<DatasetStatistics> statistics);

// Common knobs of every task.
struct GenerationKnobs {
  engine::SamplingParams sampling;
  int32_t max_new_tokens = 256;
  bool fit_context = false;  // max_new_tokens is a default: shorten it to the context
  absl::Time deadline = absl::InfiniteFuture();
};

// -------------------------------------------------------------- text

struct TextTask {
  std::vector<cv::Mat> images;                      // RGB
  std::vector<tokenizer::ChatMessage> messages;     // user/assistant turns (untrusted content)
  std::string system_prompt;                        // empty: Magma's
  std::vector<std::string> stop_strings;
  std::vector<std::string> choices;                 // optional answer constraint
  GenerationKnobs knobs;
};

// The engine request: chat prompt with one image token per image at the
// start of the first user turn.
absl::StatusOr<engine::GenerationRequest> PrepareText(const TaskContext& ctx, const TextTask& task);

// -------------------------------------------------------------- click

// Most marks a click prompt carries (beyond, labels stop being legible):
// more given boxes are RESOURCE_EXHAUSTED, more proposed ones are cut.
inline constexpr int kMaxClickMarks = 300;

struct ClickTask {
  cv::Mat screenshot;                    // RGB, original pixels
  std::string instruction;
  std::vector<vision::PixelBox> boxes;   // empty: proposed by the server
  vision::SomOptions som;
  bool constrain_to_marks = true;        // "Mark: N" over existing marks only
  GenerationKnobs knobs;
};

struct PreparedClick {
  engine::GenerationRequest request;
  std::vector<vision::Mark> marks;
  std::optional<vision::ImageFrame> frame;
  cv::Mat som_image;  // what the model sees (RGB, original size)
  bool proposed = false;
};

// Draws the Set-of-Mark overlay and builds the UI-grounding prompt.
// INVALID_ARGUMENT for an empty instruction or malformed boxes.
absl::StatusOr<PreparedClick> PrepareClick(const TaskContext& ctx, ClickTask task);

// The model's answer resolved to a click. NOT_FOUND (with the parser's
// reason) when the answer names no element or point; RESOURCE_EXHAUSTED when
// the token budget cut a constrained answer before it named a mark.
absl::StatusOr<UiAnswer> FinishClick(const PreparedClick& prepared, const engine::GenerationResult& result);

// -------------------------------------------------------------- act

struct ActTask {
  cv::Mat image;  // RGB camera image
  std::string instruction;
  std::string unnorm_key;                       // dataset_statistics.json key, or
  std::optional<ActionStatistics> statistics;   // explicit statistics
  GenerationKnobs knobs;
};

struct PreparedAct {
  engine::GenerationRequest request;
  ActionStatistics statistics;
};

// The action prompt on the image resized to robot_image_size, constrained to
// 7 action tokens then the end token. FAILED_PRECONDITION when the model has
// no action vocabulary or no statistics are available; NOT_FOUND for an
// unknown unnorm_key (listing the known ones).
absl::StatusOr<PreparedAct> PrepareAct(const TaskContext& ctx, ActTask task);

struct ActOutcome {
  std::vector<int64_t> token_ids;      // 7
  std::vector<int> bins;
  std::vector<double> normalized;      // [-1, 1]
  std::vector<double> action;          // unnormalised
};

absl::StatusOr<ActOutcome> FinishAct(const TaskContext& ctx, const PreparedAct& prepared,
                                     const engine::GenerationResult& result);

// -------------------------------------------------------------- trace

enum class TraceFormat { kMagmaTom, kHamsterPath };

struct TraceTask {
  cv::Mat image;  // RGB
  std::string instruction;
  TraceFormat format = TraceFormat::kMagmaTom;
  std::vector<vision::PixelPoint> marks;  // kMagmaTom; empty: chosen automatically
  int steps = 16;
  int speed = 8;
  // Constrain the answer to the format's grammar (always parseable).
  // Default true.
  bool constrain_output = true;
  GenerationKnobs knobs;
};

struct PreparedTrace {
  engine::GenerationRequest request;
  TraceFormat format = TraceFormat::kMagmaTom;
  std::optional<vision::ImageFrame> frame;
  std::vector<vision::PointMark> marks;  // kMagmaTom, ids from 1
  cv::Mat model_image;                   // with marks drawn (kMagmaTom)
};

absl::StatusOr<PreparedTrace> PrepareTrace(const TaskContext& ctx, TraceTask task);

struct TraceOutcome {
  std::vector<PixelTrace> traces;                 // kMagmaTom, original pixels
  TraceAnswer answer;                             // kMagmaTom, grid units
  std::vector<vision::PathWaypoint> path;         // kHamsterPath, normalized
  std::vector<vision::PixelPoint> path_pixels;    // kHamsterPath, original pixels
};

absl::StatusOr<TraceOutcome> FinishTrace(const PreparedTrace& prepared, const engine::GenerationResult& result);

// The grammar of a constrained MAGMA_TOM answer in the reference's format:
// an optional head ("Mark 3 at [x,y], ... should be moved, and their future
// positions are:"), then per-mark traces, marks in increasing order, each
// optional, at most `steps` future points on the 256 grid, blank lines
// between them.
std::string TraceGrammar(const std::vector<vision::PointMark>& marks, int steps);

// The automaton states TraceGrammar compiles to for marks numbered
// 1..`marks` (measured: 122 + 17 a mark + 1 a two-digit id + 26 a mark and
// step); PrepareTrace refuses what cannot fit engine::kMaxGrammarStates
// before compiling anything.
size_t TraceGrammarLeastStates(size_t marks, int steps);

// The HAMSTER path prompt (the one its released server sends to the VLM).
std::string HamsterPathPrompt(const std::string& instruction);

}  // namespace magma::agent

#endif  // MAGMA_AGENT_TASKS_H_
