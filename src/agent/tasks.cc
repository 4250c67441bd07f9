#include "magma/agent/tasks.h"

#include <algorithm>

#include <opencv2/imgproc.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "magma/agent/path_answer.h"
#include "magma/engine/constraint.h"
#include "magma/util/sha256.h"
#include "magma/vision/propose.h"

namespace magma::agent {
namespace {

namespace tk = magma::tokenizer;

std::shared_ptr<const vision::Crops> Crops(const TaskContext& ctx, const cv::Mat& rgb) {
  return std::make_shared<vision::Crops>(vision::PreprocessAnyres(rgb, ctx.anyres));
}

// A cache key for an image as the model will see it. The cached features and
// prompt prefixes are shared between clients, so the pixels are hashed with
// SHA-256: no client can make its image's key equal another image's.
std::string ContentKey(const cv::Mat& rgb, const TaskContext& ctx) {
  util::Sha256 h;
  for (int y = 0; y < rgb.rows; ++y) h.Update(rgb.ptr<uint8_t>(y), static_cast<size_t>(rgb.cols) * rgb.elemSize());
  const std::string digest = h.HexDigest();
  return absl::StrCat(rgb.cols, "x", rgb.rows, "/", ctx.anyres.base, "/", ctx.anyres.max_crops, "/", digest);
}

absl::Status CheckInstruction(const std::string& text, const char* field) {
  if (absl::StripAsciiWhitespace(text).empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  }
  return absl::OkStatus();
}

// Encodes the prompt and replaces the tokenizer's <image> id with the model's.
absl::StatusOr<std::vector<int32_t>> EncodePrompt(const TaskContext& ctx, const std::vector<tk::ChatMessage>& messages) {
  tk::PromptOptions po;
  po.image_start_end = ctx.image_start_end;
  const std::vector<tk::Segment> segments = tk::BuildPrompt(ctx.chat_format, messages, po);
  if (ctx.context_positions > 0 && ctx.max_token_bytes > 0) {
    size_t bytes = 0;
    for (const tk::Segment& s : segments) bytes += s.text.size();
    if (bytes / ctx.max_token_bytes > static_cast<size_t>(ctx.context_positions)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the prompt's ", bytes, " bytes of text cannot fit the context of ", ctx.context_positions,
                       " positions (a token holds at most ", ctx.max_token_bytes, " bytes)"));
    }
  }
  auto ids = ctx.tokenizer->EncodeSegments(segments, /*add_special_tokens=*/true);
  if (!ids.ok()) return ids.status();
  const int32_t tok_image = ctx.tokenizer->special_ids().image;
  for (int32_t& id : *ids) {
    if (id == tok_image) id = ctx.image_token_id;
  }
  return ids;
}

// A constrained answer the token budget stopped (the grammar would have gone on).
bool CutByBudget(const engine::GenerationRequest& request, const engine::GenerationResult& result) {
  return request.grammar != nullptr && result.finish_reason == engine::FinishReason::kLength;
}

absl::Status RanOutOfTokens(const engine::GenerationResult& result, absl::string_view before) {
  return absl::ResourceExhaustedError(
      absl::StrCat("the answer ran out of tokens (", result.token_ids.size(), ") before ", before));
}

engine::GenerationRequest BaseRequest(const TaskContext& ctx, const GenerationKnobs& knobs) {
  engine::GenerationRequest r;
  r.sampling = knobs.sampling;
  r.max_new_tokens = knobs.max_new_tokens;
  r.fit_context = knobs.fit_context;
  r.deadline = knobs.deadline;
  r.stop_token_ids = ctx.stop_ids;
  return r;
}

// What an entry of the cache takes: its pattern and the grammar's tables as
// they are now (a grammar's allowed-id lists grow as it is used).
size_t EntryBytes(const std::string& pattern, const absl::StatusOr<std::shared_ptr<const engine::Grammar>>& g) {
  return pattern.size() + (g.ok() ? (*g)->TableBytes() : 0);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const engine::Grammar>> GrammarCache::Get(
    const std::string& pattern, std::shared_ptr<const engine::TokenTable> table) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = grammars_.find(pattern);
    if (it != grammars_.end()) {
      auto g = it->second;
      if (BytesLocked() > max_bytes_) grammars_.clear();  // the cached grammars grew past the bound
      return g;
    }
  }
  auto g = engine::CompileRegex(pattern, std::move(table));
  // Malformed patterns are not kept: they come from code, not from requests.
  if (!g.ok() && g.status().code() != absl::StatusCode::kResourceExhausted) return g.status();
  const size_t bytes = EntryBytes(pattern, g);
  if (bytes > max_bytes_) return g;
  std::lock_guard<std::mutex> lock(mu_);
  if (grammars_.count(pattern) > 0) return g;  // compiled meanwhile by another request
  if (grammars_.size() >= max_entries_ || BytesLocked() + bytes > max_bytes_) {
    grammars_.clear();  // patterns depend on mark counts and steps: a full cache is mostly stale
  }
  grammars_.emplace(pattern, g);
  return g;
}

size_t GrammarCache::BytesLocked() const {
  size_t total = 0;
  for (const auto& [pattern, g] : grammars_) total += EntryBytes(pattern, g);
  return total;
}

size_t GrammarCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return BytesLocked();
}

absl::StatusOr<TaskContext> MakeTaskContext(std::shared_ptr<const tk::Tokenizer> tokenizer, int32_t image_token_id,
                                            bool image_start_end, const vision::AnyresOptions& anyres,
                                            std::optional<DatasetStatistics> statistics) {
  if (tokenizer == nullptr) return absl::FailedPreconditionError("the model directory has no tokenizer");
  TaskContext ctx;
  ctx.tokenizer = tokenizer;
  ctx.chat_format = tk::DetectChatFormat(*tokenizer);
  ctx.image_start_end = image_start_end;
  ctx.image_token_id = image_token_id;
  ctx.anyres = anyres;
  if (tokenizer->special_ids().image < 0) {
    return absl::FailedPreconditionError("the tokenizer has no <image> token");
  }
  const auto& sp = tokenizer->special_ids();
  for (int32_t id : {sp.eos, sp.eot}) {
    if (id >= 0 && std::find(ctx.stop_ids.begin(), ctx.stop_ids.end(), id) == ctx.stop_ids.end()) {
      ctx.stop_ids.push_back(id);
    }
  }
  // Constrained answers follow the decoded text, in which the answer's first
  // token may lose a leading space (SentencePiece's dummy prefix).
  std::vector<std::string> bytes(tokenizer->vocab_size()), first_bytes(tokenizer->vocab_size());
  for (int32_t id = 0; id < tokenizer->vocab_size(); ++id) {
    if (tokenizer->IsSpecial(id)) continue;
    bytes[id] = tokenizer->TokenBytes(id, /*first=*/false);
    first_bytes[id] = tokenizer->TokenBytes(id, /*first=*/true);
  }
  ctx.max_token_bytes = tokenizer->MaxBytesPerToken();
  ctx.token_table = std::make_shared<engine::TokenTable>(std::move(bytes), ctx.stop_ids, std::move(first_bytes));
  ActionCodecOptions ao;
  ao.vocab_size = tokenizer->base_vocab_size();
  if (auto codec = ActionCodec::Create(ao); codec.ok()) ctx.action_codec = *codec;
  ctx.dataset_statistics = std::move(statistics);
  return ctx;
}

// ------------------------------------------------------------------ text

absl::StatusOr<engine::GenerationRequest> PrepareText(const TaskContext& ctx, const TextTask& task) {
  if (task.messages.empty()) return absl::InvalidArgumentError("no prompt or messages");
  size_t turns = 0;
  for (const auto& m : task.messages) {
    if (m.role != "user" && m.role != "assistant" && m.role != "system") {
      return absl::InvalidArgumentError(absl::StrCat("message role '", m.role, "' must be system, user or assistant"));
    }
    turns += m.role == "system" ? 0 : 1;
  }
  // More turns than the context has positions are refused before their
  // template is built and tokenized.
  if (ctx.context_positions > 0 && turns > static_cast<size_t>(ctx.context_positions)) {
    return absl::ResourceExhaustedError(absl::StrCat(turns, " user and assistant messages; at most ",
                                                     ctx.context_positions, " (the context's positions)"));
  }
  std::vector<tk::ChatMessage> messages;
  messages.push_back({"system", {tk::Untrusted(task.system_prompt.empty() ? tk::kMagmaSystemPrompt
                                                                          : task.system_prompt)}});
  bool images_placed = task.images.empty();
  for (const auto& m : task.messages) {
    if (m.role == "system") {
      messages[0] = m;
      continue;
    }
    tk::ChatMessage out{m.role, {}};
    if (!images_placed && m.role == "user") {
      for (size_t i = 0; i < task.images.size(); ++i) {
        out.content.push_back(tk::Trusted(tk::kImagePlaceholder));
        out.content.push_back(tk::Trusted("\n"));
      }
      images_placed = true;
    }
    for (const auto& seg : m.content) out.content.push_back(tk::Untrusted(seg.text));
    messages.push_back(std::move(out));
  }
  if (!images_placed) return absl::InvalidArgumentError("images need a user message to attach to");
  auto ids = EncodePrompt(ctx, messages);
  if (!ids.ok()) return ids.status();
  engine::GenerationRequest r = BaseRequest(ctx, task.knobs);
  r.prompt_ids = *std::move(ids);
  for (const auto& img : task.images) r.images.push_back({Crops(ctx, img), ContentKey(img, ctx)});
  r.stop_strings = task.stop_strings;
  if (!task.choices.empty()) {
    auto g = engine::CompileChoices(task.choices, ctx.token_table);
    if (!g.ok()) return absl::Status(g.status().code(), absl::StrCat("choices: ", g.status().message()));
    r.grammar = *g;
  }
  return r;
}

// ------------------------------------------------------------------ click

absl::StatusOr<PreparedClick> PrepareClick(const TaskContext& ctx, ClickTask task) {
  if (auto s = CheckInstruction(task.instruction, "instruction"); !s.ok()) return s;
  PreparedClick p;
  if (task.boxes.empty()) {
    // The proposer keeps the smallest boxes when it finds more than can be
    // marked, wherever they are on the screen.
    vision::ProposeOptions propose;
    propose.max_elements = kMaxClickMarks;
    auto proposed = vision::ProposeElements(task.screenshot, propose);
    if (!proposed.ok()) return proposed.status();
    task.boxes = *std::move(proposed);
    p.proposed = true;
  }
  if (task.boxes.size() > static_cast<size_t>(kMaxClickMarks)) {
    return absl::ResourceExhaustedError(absl::StrCat(task.boxes.size(), " elements; at most ", kMaxClickMarks));
  }
  const vision::ImageSize size{task.screenshot.cols, task.screenshot.rows};
  p.frame = vision::ImageFrame::Identity(size);
  p.som_image = task.screenshot.clone();
  if (!task.boxes.empty()) {
    auto marks = vision::DrawSetOfMarks(task.boxes, *p.frame, task.som, &p.som_image);
    if (!marks.ok()) return marks.status();
    p.marks = *std::move(marks);
  }
  auto ids = EncodePrompt(ctx, tk::MagmaTaskMessages(tk::UiGroundingContent(task.instruction)));
  if (!ids.ok()) return ids.status();
  p.request = BaseRequest(ctx, task.knobs);
  p.request.prompt_ids = *std::move(ids);
  p.request.images.push_back({Crops(ctx, p.som_image), ContentKey(p.som_image, ctx)});
  if (task.constrain_to_marks && !p.marks.empty()) {
    std::string pattern;
    for (const auto& m : p.marks) absl::StrAppend(&pattern, pattern.empty() ? "" : "|", "(Mark: ", m.id, ")");
    auto g = ctx.grammars->Get(pattern, ctx.token_table);
    if (!g.ok()) return g.status();
    p.request.grammar = *g;
  }
  return p;
}

absl::StatusOr<UiAnswer> FinishClick(const PreparedClick& p, const engine::GenerationResult& result) {
  auto answer = ParseUiAnswer(result.text, p.marks, *p.frame);
  if (!answer.ok() && CutByBudget(p.request, result)) return RanOutOfTokens(result, "it named a mark");
  if (!answer.ok()) return absl::NotFoundError(absl::StrCat("the answer names no element: ", answer.status().message()));
  return answer;
}

// ------------------------------------------------------------------ act

absl::StatusOr<PreparedAct> PrepareAct(const TaskContext& ctx, ActTask task) {
  if (auto s = CheckInstruction(task.instruction, "instruction"); !s.ok()) return s;
  if (!ctx.action_codec.has_value()) {
    return absl::FailedPreconditionError("this model's vocabulary has no action tokens");
  }
  PreparedAct p;
  if (task.statistics.has_value()) {
    if (auto s = task.statistics->Validate(); !s.ok()) return absl::InvalidArgumentError(absl::StrCat("statistics: ", s.message()));
    if (task.statistics->q01.size() != 7) {
      return absl::InvalidArgumentError(absl::StrCat("statistics: 7 dimensions expected, got ", task.statistics->q01.size()));
    }
    p.statistics = *task.statistics;
  } else if (!task.unnorm_key.empty()) {
    if (!ctx.dataset_statistics.has_value()) {
      return absl::FailedPreconditionError("the model has no dataset_statistics.json; send explicit statistics");
    }
    auto s = ctx.dataset_statistics->Find(task.unnorm_key);
    if (!s.ok()) return s.status();
    p.statistics = *s;
  } else {
    auto keys = ctx.dataset_statistics.has_value() ? ctx.dataset_statistics->keys() : std::vector<std::string>();
    if (keys.size() != 1) {
      return absl::FailedPreconditionError(
          keys.empty() ? "no action statistics: the model has no dataset_statistics.json and the request none"
                       : absl::StrCat("unnorm_key is required; known keys: ", absl::StrJoin(keys, ", ")));
    }
    p.statistics = *ctx.dataset_statistics->Find(keys[0]);
  }
  if (!task.statistics.has_value() && p.statistics.q01.size() != 7) {
    return absl::FailedPreconditionError(absl::StrCat("the model's dataset_statistics.json has ",
                                                      p.statistics.q01.size(),
                                                      " action dimensions for this key; 7 expected"));
  }
  cv::Mat resized;
  cv::resize(task.image, resized, cv::Size(ctx.robot_image_size, ctx.robot_image_size), 0, 0, cv::INTER_LINEAR);
  auto ids = EncodePrompt(ctx, tk::MagmaTaskMessages(tk::RobotActionContent(task.instruction)));
  if (!ids.ok()) return ids.status();
  p.request = BaseRequest(ctx, task.knobs);
  p.request.prompt_ids = *std::move(ids);
  p.request.images.push_back({Crops(ctx, resized), ContentKey(resized, ctx)});
  std::vector<int32_t> action_ids;
  for (int64_t id = ctx.action_codec->first_token(); id <= ctx.action_codec->last_token(); ++id) {
    action_ids.push_back(static_cast<int32_t>(id));
  }
  p.request.grammar = engine::TokenSequenceGrammar(action_ids, 7, ctx.stop_ids);
  p.request.max_new_tokens = 8;
  return p;
}

absl::StatusOr<ActOutcome> FinishAct(const TaskContext& ctx, const PreparedAct& p, const engine::GenerationResult& r) {
  ActOutcome out;
  for (int32_t id : r.token_ids) {
    if (out.token_ids.size() < 7 && ctx.action_codec->IsActionToken(id)) out.token_ids.push_back(id);
  }
  if (out.token_ids.size() != 7) {
    return absl::InternalError(absl::StrCat("the model produced ", out.token_ids.size(), " action tokens, not 7"));
  }
  auto normalized = ctx.action_codec->Decode(out.token_ids);
  if (!normalized.ok()) return normalized.status();
  out.normalized = *normalized;
  for (int64_t id : out.token_ids) out.bins.push_back(ctx.action_codec->BinOfToken(id));
  auto action = Unnormalize(out.normalized, p.statistics);
  if (!action.ok()) return action.status();
  out.action = *action;
  return out;
}

// ------------------------------------------------------------------ trace

namespace {

// 0..255 without leading zeros.
constexpr char kGridNumber[] = "([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])";

}  // namespace

std::string TraceGrammar(const std::vector<vision::PointMark>& marks, int steps) {
  const std::string n = kGridNumber;
  const std::string point = "\\[" + n + "," + n + "\\]";
  if (marks.empty()) return "";  // nothing can move
  std::vector<std::string> ids;
  for (const auto& m : marks) ids.push_back(absl::StrCat(m.id));
  // The head, as the reference writes it: where the moving marks are.
  const std::string item = absl::StrCat("Mark (", absl::StrJoin(ids, "|"), ") at ", point);
  std::string out = absl::StrCat("(", item, "(, ", item, ")* should be moved, and their future positions are:\\n\\n)?");
  // Then each mark's trace, in increasing order, ended by a blank line or by
  // the end of the answer (the reference's last trace has no blank line).
  for (const auto& m : marks) {
    absl::StrAppend(&out, "(\\\"Mark ", m.id, "\\\": \\\"\\[", point, "(,", point, "){0,", steps - 1,
                    "}\\]\\\"(\\n\\n)?)?");
  }
  return out;
}

size_t TraceGrammarLeastStates(size_t marks, int steps) {
  if (marks == 0) return 0;
  const size_t two_digit_ids = marks > 9 ? marks - 9 : 0;
  return 122 + 17 * marks + two_digit_ids + 26 * marks * static_cast<size_t>(steps);
}

namespace {

// A HAMSTER answer: points with 1-3 decimals in [0, 1], gripper tags after
// a first point, at most 40 items.
std::string PathGrammar() {
  const std::string v = "(0(\\.[0-9]{1,3})?|1(\\.0{1,3})?)";
  const std::string point = "\\(" + v + ", " + v + "\\)";
  const std::string tag = "<action>(Close|Open) Gripper</action>";
  return "<ans>\\[" + point + "(, (" + point + "|" + tag + ")){0,39}\\]</ans>";
}

}  // namespace

std::string HamsterPathPrompt(const std::string& instruction) {
  return absl::StrCat(
      "\nIn the image, please execute the command described in <quest>", instruction,
      "</quest>.\nProvide a sequence of points denoting the trajectory of a robot gripper to achieve the goal.\n"
      "Format your answer as a list of tuples enclosed by <ans> and </ans> tags. For example:\n"
      "<ans>[(0.25, 0.32), (0.32, 0.17), (0.13, 0.24), <action>Open Gripper</action>, (0.74, 0.21), "
      "<action>Close Gripper</action>, ...]</ans>\n"
      "The tuple denotes point x and y location of the end effector in the image. The action tags indicate gripper "
      "actions.\nCoordinates should be floats between 0 and 1, representing relative positions.\n"
      "Remember to provide points between <ans> and </ans> tags and think step by step.");
}

absl::StatusOr<PreparedTrace> PrepareTrace(const TaskContext& ctx, TraceTask task) {
  if (auto s = CheckInstruction(task.instruction, "instruction"); !s.ok()) return s;
  if (task.steps < 1 || task.steps > 64) return absl::InvalidArgumentError("steps must be in 1..64");
  if (task.speed < 1 || task.speed > 64) return absl::InvalidArgumentError("speed must be in 1..64");
  PreparedTrace p;
  p.format = task.format;
  p.frame = vision::ImageFrame::Identity({task.image.cols, task.image.rows});
  p.model_image = task.image.clone();
  p.request = BaseRequest(ctx, task.knobs);
  std::vector<tk::Segment> content;
  if (task.format == TraceFormat::kMagmaTom) {
    if (task.marks.empty()) {
      // Automatic marks: centres of the largest proposed regions, else a grid.
      auto boxes = vision::ProposeElements(task.image);
      if (boxes.ok()) {
        std::sort(boxes->begin(), boxes->end(), [](const auto& a, const auto& b) { return a.area() > b.area(); });
        for (size_t i = 0; i < boxes->size() && task.marks.size() < 8; ++i) {
          const auto& b = (*boxes)[i];
          task.marks.push_back({(b.x1 + b.x2) / 2, (b.y1 + b.y2) / 2});
        }
      }
      if (task.marks.empty()) {
        for (int gy = 1; gy <= 3; ++gy) {
          for (int gx = 1; gx <= 3; ++gx)
            task.marks.push_back({task.image.cols * gx / 4.0, task.image.rows * gy / 4.0});
        }
      }
    }
    if (task.marks.size() > 64) return absl::ResourceExhaustedError("at most 64 marks");
    for (size_t i = 0; i < task.marks.size(); ++i) {
      const auto& m = task.marks[i];
      if (!(m.x >= 0 && m.y >= 0 && m.x <= task.image.cols && m.y <= task.image.rows)) {
        return absl::InvalidArgumentError(absl::StrCat("mark ", i, " lies outside the image"));
      }
      p.marks.push_back({static_cast<int>(i) + 1, m});
    }
    if (auto s = vision::DrawPointMarks(p.marks, *p.frame, &p.model_image); !s.ok()) return s;
    content = tk::TraceContent(task.instruction, task.speed, task.steps);
    // About 12 tokens a point, and a point's worth a mark for the head.
    p.request.max_new_tokens =
        std::max(task.knobs.max_new_tokens, 64 + 12 * (task.steps + 1) * static_cast<int>(p.marks.size()));
  } else {
    content = {tk::Trusted(tk::kImagePlaceholder), tk::Untrusted(HamsterPathPrompt(task.instruction))};
  }
  auto ids = EncodePrompt(ctx, tk::MagmaTaskMessages(content));
  if (!ids.ok()) return ids.status();
  p.request.prompt_ids = *std::move(ids);
  p.request.images.push_back({Crops(ctx, p.model_image), ContentKey(p.model_image, ctx)});
  if (task.constrain_output && task.format == TraceFormat::kMagmaTom) {
    // What cannot fit is refused at once instead of after building the
    // automaton up to the limit.
    const size_t least = TraceGrammarLeastStates(p.marks.size(), task.steps);
    if (least > engine::kMaxGrammarStates) {
      return absl::ResourceExhaustedError(absl::StrCat("a constrained trace of ", p.marks.size(), " marks and ",
                                                       task.steps, " steps needs at least ", least,
                                                       " automaton states; at most ", engine::kMaxGrammarStates,
                                                       ": ask for fewer marks or steps, or set free_answer"));
    }
  }
  if (task.constrain_output) {
    auto g = ctx.grammars->Get(
        task.format == TraceFormat::kMagmaTom ? TraceGrammar(p.marks, task.steps) : PathGrammar(), ctx.token_table);
    if (!g.ok()) return g.status();
    p.request.grammar = *g;
  }
  return p;
}

absl::StatusOr<TraceOutcome> FinishTrace(const PreparedTrace& p, const engine::GenerationResult& r) {
  TraceOutcome out;
  if (p.format == TraceFormat::kMagmaTom) {
    absl::string_view text = r.text;
    if (p.request.grammar != nullptr) {
      // The grammar makes every mark's trace optional: a constrained answer
      // that stops by itself may list none (no mark moves). One the token
      // budget cut short keeps its complete traces, each ending in ']"'
      // (which the head never holds).
      if (CutByBudget(p.request, r)) {
        const size_t end = text.rfind("]\"");
        if (end == absl::string_view::npos) return RanOutOfTokens(r, "its first trace was complete");
        text = text.substr(0, end + 2);
      }
      if (text.find("\"Mark") == absl::string_view::npos) return out;
    }
    auto answer = ParseTraceAnswer(text);
    if (!answer.ok()) return absl::InternalError(absl::StrCat("the model's trace is malformed: ", answer.status().message()));
    out.answer = *answer;
    out.traces = TracesToPixels(out.answer, *p.frame);
    // An answer without the head (constrained answers have none) gives no
    // start: a trace starts where its mark was drawn.
    for (PixelTrace& t : out.traces) {
      if (t.has_start) continue;
      auto m =
          std::find_if(p.marks.begin(), p.marks.end(), [&](const vision::PointMark& pm) { return pm.id == t.mark; });
      if (m == p.marks.end()) continue;
      t.points.insert(t.points.begin(), m->point);
      t.has_start = true;
    }
  } else {
    // The answer may have reasoning around the <ans> block, and may mention
    // the tags in it ("points between <ans> and </ans> tags"): the last
    // block that parses is the path.
    std::optional<absl::StatusOr<std::vector<vision::PathWaypoint>>> path;
    for (size_t b = r.text.find("<ans>"); b != std::string::npos; b = r.text.find("<ans>", b + 1)) {
      const size_t e = r.text.find("</ans>", b);
      if (e == std::string::npos) break;
      auto parsed = ParsePathAnswer(r.text.substr(b, e + 6 - b));
      if (parsed.ok() || !path.has_value() || !path->ok()) path = std::move(parsed);
    }
    if (!path.has_value()) {
      if (CutByBudget(p.request, r)) return RanOutOfTokens(r, "its path was complete");
      return absl::InternalError("the model's answer has no <ans>...</ans> path");
    }
    if (!path->ok()) {
      return absl::InternalError(absl::StrCat("the model's path is malformed: ", path->status().message()));
    }
    out.path = **path;
    out.path_pixels = PathToPixels(out.path, *p.frame);
  }
  return out;
}

}  // namespace magma::agent
