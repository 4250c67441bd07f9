#include "magma/tokenizer/chat.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace magma::tokenizer {
namespace {

constexpr char kVicunaSystem[] =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";

// Whether code point `c` is whitespace to Python's str.isspace(), which the
// reference template's Jinja `trim` (str.strip()) removes.
bool IsPythonSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The code point whose UTF-8 encoding is `bytes` (2 to 4 bytes; 1 for ASCII);
// a byte string that is not one encoding gives 0xFFFFFFFF.
uint32_t CodePoint(absl::string_view bytes) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n == 1) return b[0] < 0x80 ? b[0] : 0xFFFFFFFF;
  const size_t want = b[0] >= 0xF0 ? 4 : b[0] >= 0xE0 ? 3 : b[0] >= 0xC0 ? 2 : 0;
  if (want != n) return 0xFFFFFFFF;
  uint32_t c = b[0] & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) {
    if ((b[i] & 0xC0) != 0x80) return 0xFFFFFFFF;
    c = (c << 6) | (b[i] & 0x3F);
  }
  return c;
}

// Length in bytes of the UTF-8 character that starts `text`.
size_t FirstCharLength(absl::string_view text) {
  size_t n = 1;
  while (n < text.size() && n < 4 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) ++n;
  return n;
}

// Length in bytes of the UTF-8 character that ends `text`.
size_t LastCharLength(absl::string_view text) {
  size_t n = 1;
  while (n < text.size() && n < 4 && (static_cast<unsigned char>(text[text.size() - n]) & 0xC0) == 0x80) ++n;
  return n;
}

absl::string_view StripPythonSpace(absl::string_view text, bool leading) {
  while (!text.empty()) {
    const size_t n = leading ? FirstCharLength(text) : LastCharLength(text);
    if (!IsPythonSpace(CodePoint(leading ? text.substr(0, n) : text.substr(text.size() - n)))) break;
    text = leading ? text.substr(n) : text.substr(0, text.size() - n);
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
