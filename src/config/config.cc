#include "magma/config/config.h"

#include <fstream>
#include <iterator>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "magma/util/address.h"
#include "magma/util/file.h"
#include "magma/util/logging.h"

namespace magma::config {
namespace {

// The field name at the start of a textproto line ("  threads: 2" ->
// "threads"), so that value errors name their field too.
std::string FieldOnLine(absl::string_view text, int line) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  if (line < 0 || line >= static_cast<int>(lines.size())) return "";
  absl::string_view l = absl::StripLeadingAsciiWhitespace(lines[line]);
  size_t end = 0;
  while (end < l.size() && (absl::ascii_isalnum(l[end]) || l[end] == '_')) ++end;
  return std::string(l.substr(0, end));
}

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  CollectErrors(absl::string_view source, absl::string_view text)
      : source_(std::string(source)), text_(text) {}
  void AddError(int line, int column, const std::string& message) override {
    // The parser counts from 0; editors count from 1.
    std::string field = FieldOnLine(text_, line);
    errors_.push_back(absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ",
                                   field.empty() ? "" : absl::StrCat("field '", field, "': "), message));
  }
  void AddWarning(int line, int column, const std::string& message) override {
    AddError(line, column, message);
  }
  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::string source_;
  absl::string_view text_;
  std::vector<std::string> errors_;
};

}  // namespace

ServerConfig DefaultConfig() {
  ServerConfig c;
  c.set_listen("127.0.0.1:50051");
  c.set_threads(0);
  c.set_log_level("info");
  c.set_drain_deadline_ms(10000);
  auto* g = c.mutable_grpc();
  g->set_max_receive_message_bytes(32 << 20);
  g->set_max_send_message_bytes(32 << 20);
  g->set_keepalive_min_ping_interval_ms(10000);
  g->set_keepalive_time_ms(60000);
  g->set_keepalive_timeout_ms(20000);
  g->set_keepalive_permit_without_calls(true);
  auto* m = c.mutable_model();
  m->set_dir("models/magma-tiny");
  m->set_dtype("bfloat16");
  m->set_prefault(true);
  m->set_weights("auto");
  auto* e = c.mutable_engine();
  e->set_max_batch(8);
  e->set_max_queue(64);
  e->set_context_tokens(4096);
  e->set_prefill_chunk_tokens(256);
  e->set_vision_cache_mb(256);
  e->set_prefix_cache_mb(512);
  auto* l = c.mutable_limits();
  l->set_max_image_bytes(16 << 20);
  l->set_max_image_pixels(4096 * 4096);
  l->set_max_images_per_request(4);
  l->set_max_elements(300);
  l->set_max_tokens(2048);
  l->set_max_waiting_calls(64);
  l->set_max_text_bytes(1 << 20);
  c.set_worker_threads(2);
  return c;
}

absl::StatusOr<ServerConfig> ParseText(absl::string_view text, absl::string_view source) {
  ServerConfig config = DefaultConfig();
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors(source, text);
  parser.RecordErrorsTo(&errors);
  if (!parser.MergeFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid config: ", errors.Joined()));
  }
  return config;
}

absl::StatusOr<ServerConfig> LoadFile(const std::string& path) {
  auto text = util::ReadFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseText(*text, path);
}

absl::Status Validate(const ServerConfig& c) {
  auto bad = [](absl::string_view field, absl::string_view rule, auto value) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid config: ", field, " ", rule, " (got ", value, ")"));
  };
  if (c.listen().empty() || c.listen().find(':') == std::string::npos) {
    return bad("listen", "must be host:port", absl::StrCat("'", c.listen(), "'"));
  }
  if (c.threads() < 0 || c.threads() > 1024) return bad("threads", "must be in 0..1024", c.threads());
  if (!log::IsValidLevel(c.log_level())) {
    return bad("log_level", "must be trace, debug, info, warn, error, critical or off",
               absl::StrCat("'", c.log_level(), "'"));
  }
  if (c.drain_deadline_ms() < 0) return bad("drain_deadline_ms", "must be >= 0", c.drain_deadline_ms());
  if (!c.metrics_listen().empty()) {
    if (auto parsed = util::ParseHostPort(c.metrics_listen()); !parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid config: metrics_listen must be empty or host:port with a port in 0..65535 (",
                       parsed.status().message(), ")"));
    }
  }
  const auto& g = c.grpc();
  if (g.max_receive_message_bytes() <= 0 || g.max_receive_message_bytes() > (int64_t{1} << 31) - 1) {
    return bad("grpc.max_receive_message_bytes", "must be in 1..2147483647",
               g.max_receive_message_bytes());
  }
  if (g.max_send_message_bytes() <= 0 || g.max_send_message_bytes() > (int64_t{1} << 31) - 1) {
    return bad("grpc.max_send_message_bytes", "must be in 1..2147483647", g.max_send_message_bytes());
  }
  // gRPC takes these as int channel arguments.
  constexpr int64_t kIntMax = (int64_t{1} << 31) - 1;
  if (g.keepalive_min_ping_interval_ms() < 0 || g.keepalive_min_ping_interval_ms() > kIntMax) {
    return bad("grpc.keepalive_min_ping_interval_ms", "must be in 0..2147483647", g.keepalive_min_ping_interval_ms());
  }
  if (g.keepalive_time_ms() <= 0 || g.keepalive_time_ms() > kIntMax) {
    return bad("grpc.keepalive_time_ms", "must be in 1..2147483647", g.keepalive_time_ms());
  }
  if (g.keepalive_timeout_ms() <= 0 || g.keepalive_timeout_ms() > kIntMax) {
    return bad("grpc.keepalive_timeout_ms", "must be in 1..2147483647", g.keepalive_timeout_ms());
  }
  const auto& m = c.model();
  if (m.dir().empty()) return bad("model.dir", "must not be empty", "''");
  if (m.dtype() != "float32" && m.dtype() != "bfloat16") {
    return bad("model.dtype", "must be float32 or bfloat16", absl::StrCat("'", m.dtype(), "'"));
  }
  const auto& e = c.engine();
  if (e.max_batch() < 1 || e.max_batch() > 256) return bad("engine.max_batch", "must be in 1..256", e.max_batch());
  if (e.max_queue() < 0) return bad("engine.max_queue", "must be >= 0", e.max_queue());
  if (e.context_tokens() < 0) return bad("engine.context_tokens", "must be >= 0", e.context_tokens());
  if (e.prefill_chunk_tokens() < 1) {
    return bad("engine.prefill_chunk_tokens", "must be >= 1", e.prefill_chunk_tokens());
  }
  if (e.vision_cache_mb() < 0) return bad("engine.vision_cache_mb", "must be >= 0", e.vision_cache_mb());
  if (e.prefix_cache_mb() < 0) return bad("engine.prefix_cache_mb", "must be >= 0", e.prefix_cache_mb());
  const auto& l = c.limits();
  if (l.max_image_bytes() < 1) return bad("limits.max_image_bytes", "must be >= 1", l.max_image_bytes());
  if (l.max_image_pixels() < 1) return bad("limits.max_image_pixels", "must be >= 1", l.max_image_pixels());
  if (l.max_images_per_request() < 0) {
    return bad("limits.max_images_per_request", "must be >= 0", l.max_images_per_request());
  }
  if (l.max_elements() < 0) return bad("limits.max_elements", "must be >= 0", l.max_elements());
  if (l.max_tokens() < 1) return bad("limits.max_tokens", "must be >= 1", l.max_tokens());
  if (l.max_waiting_calls() < 1) return bad("limits.max_waiting_calls", "must be >= 1", l.max_waiting_calls());
  if (l.max_text_bytes() < 1) return bad("limits.max_text_bytes", "must be >= 1", l.max_text_bytes());
  if (c.worker_threads() < 1 || c.worker_threads() > 64) {
    return bad("worker_threads", "must be in 1..64", c.worker_threads());
  }
  if (c.security().tls_cert_file().empty() != c.security().tls_key_file().empty()) {
    return bad("security.tls_cert_file", "and security.tls_key_file must be set together", "one of them");
  }
  if (m.weights() != "auto" && m.weights() != "mapped" && m.weights() != "resident") {
    return bad("model.weights", "must be auto, mapped or resident", absl::StrCat("'", m.weights(), "'"));
  }
  if (!m.vision_dtype().empty() && m.vision_dtype() != "float32" && m.vision_dtype() != "bfloat16") {
    return bad("model.vision_dtype", "must be empty, float32 or bfloat16", absl::StrCat("'", m.vision_dtype(), "'"));
  }
  return absl::OkStatus();
}

}  // namespace magma::config
