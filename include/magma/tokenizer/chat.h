// Chat formats and the Magma task prompts, as code. A prompt is built as
// segments: template text (trusted, may hold special tokens) and client text
// (never parsed for special tokens), so that a client cannot inject control
// or image tokens.
#ifndef MAGMA_TOKENIZER_CHAT_H_
#define MAGMA_TOKENIZER_CHAT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "magma/tokenizer/tokenizer.h"

namespace magma::tokenizer {

enum class ChatFormat {
  kLlama3,    // Magma: <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kVicunaV1,  // LLaVA/VILA/HAMSTER: "SYSTEM USER: ... ASSISTANT: ...</s>"
  kPlain,     // contents joined by newlines, no roles
};

// "llama3", "vicuna_v1", "plain"; INVALID_ARGUMENT listing them otherwise.
absl::StatusOr<ChatFormat> ParseChatFormat(absl::string_view name);
const char* ChatFormatName(ChatFormat format);
// llama3 when the vocabulary has <|start_header_id|>, vicuna_v1 for
// SentencePiece vocabularies, plain otherwise.
ChatFormat DetectChatFormat(const Tokenizer& tokenizer);

struct ChatMessage {
  std::string role;               // "system", "user" or "assistant"
  std::vector<Segment> content;   // trusted and untrusted parts
};

// Helpers for message content.
Segment Trusted(std::string text);
Segment Untrusted(std::string text);

struct PromptOptions {
  // Wrap each image token in <image_start> ... <image_end> (the checkpoint's
  // mm_use_image_start_end). Default false.
  bool image_start_end = false;
  // Append the assistant header so that the model answers. Default true.
  bool add_generation_prompt = true;
};

// The whole prompt. For llama3 this starts with "<|begin_of_text|>" as the
// reference chat template does; whether the tokenizer adds another BOS is
// decided by its post-processor (EncodeSegments(add_special_tokens)).
// Message content is stripped of surrounding whitespace for llama3, as the
// reference template does. Each "<image>" placeholder must be a Trusted
// segment of its own.
std::vector<Segment> BuildPrompt(ChatFormat format, const std::vector<ChatMessage>& messages,
                                 const PromptOptions& options = {});

// The placeholder for one image in message content.
constexpr char kImagePlaceholder[] = "<image>";

// Magma's system prompt for all tasks.
constexpr char kMagmaSystemPrompt[] = "You are agent that can see, talk and act.";

// User content of the Magma task prompts (one image each):
//   VQA:          <image>\n{question} Answer the question briefly.
//   UI grounding: <image>\nIn this view I need to click a button to "{instruction}"? Provide the
//                 coordinates and the mark index of the containing bounding box if applicable.
//   Robot action: <image>\nWhat action should the robot take to {task}?
//   Trace (ToM):  <image>\nThe image is split into 256x256 grids and is labeled with numeric marks
//                 [1, 2, ...].\nThe robot is doing: {task}. To finish the task, how to move the
//                 numerical marks in the image with speed {speed} for the next {steps} steps?\n
std::vector<Segment> VqaContent(const std::string& question);
std::vector<Segment> UiGroundingContent(const std::string& instruction);
std::vector<Segment> RobotActionContent(const std::string& task);
std::vector<Segment> TraceContent(const std::string& task, int speed, int steps);

// [system message, user message] for a Magma task.
std::vector<ChatMessage> MagmaTaskMessages(std::vector<Segment> user_content);

}  // namespace magma::tokenizer

#endif  // MAGMA_TOKENIZER_CHAT_H_
