#include "magma/tokenizer/chat.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace magma::tokenizer {
namespace {

constexpr char kVicunaSystem[] =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";

// The UTF-8 encodings of the characters Python's str.isspace() accepts,
// which the reference template's Jinja `trim` (str.strip()) removes.
// UTF-8 is self-synchronising, so a match at either end of valid text is a
// whole character.
constexpr absl::string_view kPythonSpaces[] = {
    "\t",     "\n",     "\v",     "\f",     "\r",     "\x1c",   "\x1d",   "\x1e",   "\x1f",   " ",
    "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006",
    "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};

absl::string_view StripPythonSpace(absl::string_view text, bool leading) {
  for (bool stripped = true; stripped;) {
    stripped = false;
    for (absl::string_view space : kPythonSpaces) {
      if (leading ? absl::ConsumePrefix(&text, space) : absl::ConsumeSuffix(&text, space)) stripped = true;
    }
  }
  return text;
}

// Content with the reference template's trim applied to the whole text.
std::vector<Segment> Stripped(std::vector<Segment> content) {
  while (!content.empty()) {
    auto& first = content.front().text;
    first = std::string(StripPythonSpace(first, /*leading=*/true));
    if (!first.empty()) break;
    content.erase(content.begin());
  }
  while (!content.empty()) {
    auto& last = content.back().text;
    last = std::string(StripPythonSpace(last, /*leading=*/false));
    if (!last.empty()) break;
    content.pop_back();
  }
  return content;
}

void AppendContent(const std::vector<Segment>& content, const PromptOptions& options, std::vector<Segment>* out) {
  for (const Segment& s : content) {
    if (s.parse_special && s.text == kImagePlaceholder && options.image_start_end) {
      out->push_back(Trusted("<image_start><image><image_end>"));
    } else {
      out->push_back(s);
    }
  }
}

}  // namespace

Segment Trusted(std::string text) { return Segment{std::move(text), true}; }
Segment Untrusted(std::string text) { return Segment{std::move(text), false}; }

absl::StatusOr<ChatFormat> ParseChatFormat(absl::string_view name) {
  if (name == "llama3") return ChatFormat::kLlama3;
  if (name == "vicuna_v1") return ChatFormat::kVicunaV1;
  if (name == "plain") return ChatFormat::kPlain;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown chat format '", name, "': expected llama3, vicuna_v1 or plain"));
}

const char* ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kVicunaV1: return "vicuna_v1";
    case ChatFormat::kPlain: return "plain";
  }
  return "?";
}

ChatFormat DetectChatFormat(const Tokenizer& tokenizer) {
  if (tokenizer.PieceToId("<|start_header_id|>") >= 0) return ChatFormat::kLlama3;
  if (std::string(tokenizer.kind()) == "sentencepiece") return ChatFormat::kVicunaV1;
  return ChatFormat::kPlain;
}

std::vector<Segment> BuildPrompt(ChatFormat format, const std::vector<ChatMessage>& messages,
                                 const PromptOptions& options) {
  std::vector<Segment> out;
  switch (format) {
    case ChatFormat::kLlama3: {
      out.push_back(Trusted("<|begin_of_text|>"));
      for (const ChatMessage& m : messages) {
        out.push_back(Trusted("<|start_header_id|>"));
        out.push_back(Untrusted(m.role));
        out.push_back(Trusted("<|end_header_id|>\n\n"));
        AppendContent(Stripped(m.content), options, &out);
        out.push_back(Trusted("<|eot_id|>"));
      }
      if (options.add_generation_prompt) out.push_back(Trusted("<|start_header_id|>assistant<|end_header_id|>\n\n"));
      break;
    }
    case ChatFormat::kVicunaV1: {
      // LLaVA's "two separators" style: system, then "ROLE: message" pairs
      // separated by " " after user turns and "</s>" after assistant turns.
      std::vector<Segment> system = {Untrusted(kVicunaSystem)};
      size_t first = 0;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        first = 1;
      }
      AppendContent(system, options, &out);
      out.push_back(Trusted(" "));
      for (size_t i = first; i < messages.size(); ++i) {
        const bool user = messages[i].role != "assistant";
        out.push_back(Trusted(user ? "USER: " : "ASSISTANT: "));
        AppendContent(messages[i].content, options, &out);
        out.push_back(Trusted(user ? " " : "</s>"));
      }
      if (options.add_generation_prompt) out.push_back(Trusted("ASSISTANT:"));
      break;
    }
    case ChatFormat::kPlain: {
      for (const ChatMessage& m : messages) {
        if (m.role == "system") continue;
        AppendContent(m.content, options, &out);
        out.push_back(Trusted("\n"));
      }
      break;
    }
  }
  return out;
}

std::vector<Segment> VqaContent(const std::string& question) {
  return {Trusted(kImagePlaceholder), Trusted("\n"), Untrusted(question), Trusted(" Answer the question briefly.")};
}

std::vector<Segment> UiGroundingContent(const std::string& instruction) {
  return {Trusted(kImagePlaceholder), Trusted("\nIn this view I need to click a button to \""), Untrusted(instruction),
          Trusted("\"? Provide the coordinates and the mark index of the containing bounding box if applicable.")};
}

std::vector<Segment> RobotActionContent(const std::string& task) {
  return {Trusted(kImagePlaceholder), Trusted("\nWhat action should the robot take to "), Untrusted(task),
          Trusted("?")};
}

std::vector<Segment> TraceContent(const std::string& task, int speed, int steps) {
  return {Trusted(kImagePlaceholder),
          Trusted("\nThe image is split into 256x256 grids and is labeled with numeric marks [1, 2, ...].\n"
                  "The robot is doing: "),
          Untrusted(task),
          Trusted(absl::StrCat(". To finish the task, how to move the numerical marks in the image with speed ", speed,
                               " for the next ", steps, " steps?\n"))};
}

std::vector<ChatMessage> MagmaTaskMessages(std::vector<Segment> user_content) {
  return {ChatMessage{"system", {Untrusted(kMagmaSystemPrompt)}}, ChatMessage{"user", std::move(user_content)}};
}

}  // namespace magma::tokenizer
