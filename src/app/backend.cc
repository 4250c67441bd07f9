#include "magma/app/backend.h"

#include <algorithm>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "magma/engine/magma_runner.h"
#include "magma/model/model.h"
#include "magma/tokenizer/tokenizer.h"
#include "magma/util/logging.h"

namespace magma::app {

api::ServerOptions ServerOptionsFrom(const config::ServerConfig& c) {
  api::ServerOptions o;
  o.listen = c.listen();
  o.max_receive_message_bytes = c.grpc().max_receive_message_bytes();
  o.max_send_message_bytes = c.grpc().max_send_message_bytes();
  o.keepalive_min_ping_interval_ms = c.grpc().keepalive_min_ping_interval_ms();
  o.keepalive_time_ms = c.grpc().keepalive_time_ms();
  o.keepalive_timeout_ms = c.grpc().keepalive_timeout_ms();
  o.keepalive_permit_without_calls = c.grpc().keepalive_permit_without_calls();
  o.worker_threads = c.worker_threads();
  o.bearer_token = c.security().bearer_token();
  o.tls_cert_file = c.security().tls_cert_file();
  o.tls_key_file = c.security().tls_key_file();
  o.metrics_listen = c.metrics_listen();
  // An image travels inside a request: no larger than gRPC accepts (a
  // config that lowers only the message limit lowers this one too).
  o.limits.max_image_bytes = std::min(c.limits().max_image_bytes(), c.grpc().max_receive_message_bytes());
  o.limits.max_image_pixels = c.limits().max_image_pixels();
  o.limits.max_images_per_request = c.limits().max_images_per_request();
  o.limits.max_elements = c.limits().max_elements();
  o.limits.max_tokens = c.limits().max_tokens();
  o.limits.max_waiting_calls = c.limits().max_waiting_calls();
  o.limits.max_text_bytes = c.limits().max_text_bytes();
  return o;
}

namespace {

absl::StatusOr<LoadedBackend> LoadOnThisThread(const config::ServerConfig& c) {
  namespace fs = std::filesystem;
  const std::string dir = c.model().dir();
  model::LoadOptions lo;
  lo.dtype = c.model().dtype();
  lo.vision_dtype = c.model().vision_dtype();
  lo.prefault = c.model().prefault();
  lo.weights = c.model().weights();
  auto m = model::MagmaModel::Load(dir, lo);
  if (!m.ok()) return m.status();
  LoadedBackend out;
  out.model = std::shared_ptr<model::MagmaModel>(std::move(*m));
  const model::MagmaModel& mm = *out.model;

  auto tok = tokenizer::LoadTokenizer(dir);
  if (!tok.ok()) return tok.status();
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer(std::move(*tok));

  std::optional<agent::DatasetStatistics> stats;
  const fs::path stats_path = fs::path(dir) / "dataset_statistics.json";
  std::error_code ec;
  if (fs::exists(stats_path, ec)) {
    auto s = agent::DatasetStatistics::Load(stats_path.string());
    if (!s.ok()) return s.status();
    stats = *std::move(s);
  }
  const vision::AnyresOptions anyres = model::AnyresOptionsOf(mm.config().preprocess);
  auto ctx = agent::MakeTaskContext(tokenizer, static_cast<int32_t>(mm.image_token_id()),
                                    mm.config().use_image_start_end, anyres, stats);
  if (!ctx.ok()) return ctx.status();

  engine::MagmaRunnerOptions ro;
  ro.slots = c.engine().max_batch();
  ro.context_tokens = c.engine().context_tokens();
  engine::EngineOptions eo;
  eo.max_batch = c.engine().max_batch();
  eo.max_queue = c.engine().max_queue();
  eo.prefill_chunk_tokens = c.engine().prefill_chunk_tokens();
  eo.vision_cache_bytes = int64_t{c.engine().vision_cache_mb()} << 20;
  eo.prefix_cache_bytes = int64_t{c.engine().prefix_cache_mb()} << 20;
  auto runner = engine::MakeMagmaRunner(out.model.get(), ro);
  const int context = runner->slot_capacity();
  const double kv_mb = runner->kv_bytes_total() / 1e6;

  auto backend = std::make_shared<api::Backend>();
  backend->engine = std::make_unique<engine::Engine>(std::move(runner), tokenizer, eo);
  backend->tasks = *std::move(ctx);
  backend->tasks.context_positions = context;
  api::ServingInfo& info = backend->info;
  info.model_name = mm.name();
  info.architecture = mm.architecture();
  info.dtype = c.model().dtype();
  info.vocab_size = mm.vocab_size();
  info.max_context_tokens = context;
  info.num_parameters = mm.num_parameters();
  info.image_crop_size = mm.crop_size();
  info.max_crops_per_image = mm.max_crops();
  info.image_tokens_per_crop = static_cast<int32_t>(mm.ImageTokenCount(1, 1));
  info.max_queue = eo.max_queue;
  info.max_batch = eo.max_batch;
  MAGMA_LOG_INFO("engine: {} slots x {} positions ({:.0f} MB KV cache), tokenizer {} ({} tokens), chat format {}",
                 ro.slots, context, kv_mb, tokenizer->kind(), tokenizer->vocab_size(),
                 tokenizer::ChatFormatName(backend->tasks.chat_format));
  out.backend = std::move(backend);
  return out;
}

}  // namespace

absl::StatusOr<LoadedBackend> LoadBackend(const config::ServerConfig& c) {
  // Loading runs ATen's OpenMP loops. Done on the calling thread, that
  // thread's OpenMP team would outlive the load, and with more OpenMP
  // threads than cores libgomp stops spinning between parallel regions: the
  // engine's decode steps measured ~25% slower. A thread that exits takes its
  // team with it.
  absl::StatusOr<LoadedBackend> result = absl::UnknownError("not loaded");
  std::thread([&] {
    // libtorch reports a failed allocation (say, a KV cache of engine.max_batch
    // slots that does not fit in memory) by throwing.
    try {
      result = LoadOnThisThread(c);
    } catch (const std::exception& e) {
      result = absl::ResourceExhaustedError(absl::StrCat("loading the model from '", c.model().dir(), "': ", e.what()));
    }
  }).join();
  return result;
}

}  // namespace magma::app
