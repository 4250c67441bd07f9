// magma-serve: the server process. Loads the config, starts the gRPC front
// (health NOT_SERVING), loads the model, turns SERVING, and on SIGINT/SIGTERM
// drains within the configured deadline and exits 0.
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <future>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "magma/api/server.h"
#include "magma/config/config.h"
#include "magma/model/runtime.h"
#include "magma/app/backend.h"
#include "magma/util/logging.h"

ABSL_FLAG(std::string, config, "", "Config file (textproto, schema magma.config.ServerConfig)");
ABSL_FLAG(std::string, listen, "", "Listen address host:port; overrides the config");
ABSL_FLAG(std::string, model_dir, "", "Checkpoint directory; overrides model.dir");
ABSL_FLAG(int, threads, -1, "libtorch intra-op threads (0 = one per core); overrides the config");
ABSL_FLAG(std::string, log_level, "", "trace|debug|info|warn|error|critical|off; overrides the config");

namespace {

// Start-up errors reach the user whatever the log level.
int Fail(const absl::Status& status) {
  if (spdlog::should_log(spdlog::level::err)) {
    MAGMA_LOG_ERROR("{}", status.ToString());
  } else {
    std::cerr << "magma-serve: " << status.ToString() << "\n";
  }
  return 2;
}

// Blocks SIGINT and SIGTERM in this and every later thread; WaitForSignal
// receives them synchronously.
sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves a Magma-style vision-language-action model over gRPC.\n"
      "  magma-serve --config configs/default.textproto [--listen 127.0.0.1:50051]");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::cerr << "magma-serve: unexpected argument '" << rest[1] << "' (a config file is given with --config)\n"
              << absl::ProgramUsageMessage() << "\n";
    return 2;
  }
  const sigset_t stop_signals = BlockStopSignals();

  // Config: file (or defaults), then flags, then validation.
  magma::config::ServerConfig config = magma::config::DefaultConfig();
  if (!absl::GetFlag(FLAGS_config).empty()) {
    auto loaded = magma::config::LoadFile(absl::GetFlag(FLAGS_config));
    if (!loaded.ok()) return Fail(loaded.status());
    config = *std::move(loaded);
  }
  if (!absl::GetFlag(FLAGS_listen).empty()) config.set_listen(absl::GetFlag(FLAGS_listen));
  if (!absl::GetFlag(FLAGS_model_dir).empty()) {
    config.mutable_model()->set_dir(absl::GetFlag(FLAGS_model_dir));
  }
  if (absl::GetFlag(FLAGS_threads) != -1) config.set_threads(absl::GetFlag(FLAGS_threads));
  if (!absl::GetFlag(FLAGS_log_level).empty()) config.set_log_level(absl::GetFlag(FLAGS_log_level));
  if (auto status = magma::config::Validate(config); !status.ok()) return Fail(status);
  (void)magma::log::SetLevel(config.log_level());

  const int threads = magma::model::ConfigureRuntime(config.threads());
  MAGMA_LOG_INFO("magma-serve {} | threads {} | BLAS {} | model {} ({}) | listen {}",
                 magma::api::ServerVersion(), threads, magma::model::BlasBackend(),
                 config.model().dir(), config.model().dtype(), config.listen());

  const magma::api::ServerOptions options = magma::app::ServerOptionsFrom(config);
  auto server = magma::api::Server::Start(options);
  if (!server.ok()) return Fail(server.status());
  MAGMA_LOG_INFO("listening on port {} (health NOT_SERVING while the model loads)",
                 (*server)->port());

  // The first SIGINT/SIGTERM drains (or, while the model is still loading and
  // nothing can be in flight, exits at once); a second one exits immediately.
  std::atomic<bool> loaded{false};
  std::promise<void> stop_requested;
  std::thread([&stop_signals, &loaded, &stop_requested] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (!loaded.load()) {
      MAGMA_LOG_INFO("signal {} while loading the model: exiting", sig);
      std::_Exit(0);
    }
    MAGMA_LOG_INFO("signal {} received", sig);
    stop_requested.set_value();
    sigwait(&stop_signals, &sig);
    MAGMA_LOG_WARN("second signal {}: exiting without waiting for in-flight calls", sig);
    std::_Exit(1);
  }).detach();

  auto loaded_backend = magma::app::LoadBackend(config);
  if (!loaded_backend.ok()) {
    (*server)->Shutdown(absl::ZeroDuration());
    return Fail(loaded_backend.status());
  }
  // A signal from here on drains (before SetReady, nothing is in flight yet).
  loaded.store(true);
  (*server)->SetReady(loaded_backend->backend);
  MAGMA_LOG_INFO("model loaded; SERVING");

  stop_requested.get_future().wait();
  const absl::Duration drain = absl::Milliseconds(config.drain_deadline_ms());
  MAGMA_LOG_INFO("draining: in-flight calls have {} ms", config.drain_deadline_ms());
  (*server)->Shutdown(drain);
  server->reset();
  // The engine's decode loop stops here, on this thread, before the backend
  // goes: the callbacks of its last requests hold references to the backend,
  // and the backend must not be destroyed on the engine's own thread. The
  // engine goes before the model.
  loaded_backend->backend->engine.reset();
  loaded_backend->backend.reset();
  MAGMA_LOG_INFO("stopped");
  return 0;
}
