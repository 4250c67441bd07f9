// The magma-serve binary as a user runs it: start, health over gRPC, signal,
// exit status; and start-up config errors.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "magma/model/random_init.h"
#include "magma/util/npy.h"
#include "testing/temp_dir.h"

extern char** environ;

namespace magma {
namespace {

const std::string kServe = std::string(MAGMA_BINARY_DIR) + "/src/tools/magma-serve";

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

const std::string kCli = std::string(MAGMA_BINARY_DIR) + "/src/tools/magma-cli";

// Spawns `binary` (default magma-serve) with `args`, stdout+stderr to
// `log_path`.
pid_t Spawn(const std::vector<std::string>& args, const std::string& log_path, const std::string& binary = kServe) {
  std::vector<char*> argv;
  std::vector<std::string> owned = {binary};
  owned.insert(owned.end(), args.begin(), args.end());
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Waits for the child to exit; returns its exit status or -1 on timeout.
int WaitExit(pid_t pid, std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

std::string Health(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(&ctx, {}, &resp);
  if (!st.ok()) return "ERROR";
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
}

TEST(ServeProcessTest, ServesThenExitsCleanlyOnSigterm) {
  testing::TempDir dir;
  auto preset = model::GetPreset("tiny");
  ASSERT_TRUE(preset.ok());
  ASSERT_TRUE(model::WriteRandomModel(*preset, 7, dir.File("model")).ok());
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  const std::string log = dir.File("serve.log");
  pid_t pid = Spawn({"--config", std::string(MAGMA_SOURCE_DIR) + "/configs/default.textproto", "--listen", address,
                     "--model_dir", dir.File("model"), "--threads", "1"},
                    log);
  std::string status;
  for (int i = 0; i < 600 && status != "SERVING"; ++i) {
    status = Health(address);
    if (status != "SERVING") std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(status, "SERVING") << ReadAll(log);
  const std::string text = ReadAll(log);
  EXPECT_NE(text.find("magma-serve"), std::string::npos);
  EXPECT_NE(text.find("threads 1"), std::string::npos) << text;
  EXPECT_NE(text.find("BLAS"), std::string::npos) << text;

  ASSERT_EQ(kill(pid, SIGTERM), 0);
  EXPECT_EQ(WaitExit(pid, std::chrono::seconds(15)), 0) << ReadAll(log);
  EXPECT_NE(ReadAll(log).find("stopped"), std::string::npos);
}

TEST(ServeProcessTest, SigintWorksLikeCtrlC) {
  testing::TempDir dir;
  auto preset = model::GetPreset("tiny");
  ASSERT_TRUE(model::WriteRandomModel(*preset, 7, dir.File("model")).ok());
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  pid_t pid = Spawn({"--listen", address, "--model_dir", dir.File("model"), "--threads", "1"}, dir.File("log"));
  std::string status;
  for (int i = 0; i < 600 && status != "SERVING"; ++i) {
    status = Health(address);
    if (status != "SERVING") std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(status, "SERVING") << ReadAll(dir.File("log"));
  ASSERT_EQ(kill(pid, SIGINT), 0);
  EXPECT_EQ(WaitExit(pid, std::chrono::seconds(15)), 0) << ReadAll(dir.File("log"));
}

struct BadStart {
  const char* name;
  std::string config_text;           // written to a file when non-empty
  std::vector<std::string> args;     // extra flags
  std::string expected;              // substring of the log
};

void PrintTo(const BadStart& b, std::ostream* os) { *os << b.name; }

class ServeStartErrorTest : public ::testing::TestWithParam<BadStart> {};

TEST_P(ServeStartErrorTest, ExitsWithMessageNamingTheProblem) {
  testing::TempDir dir;
  std::vector<std::string> args = GetParam().args;
  if (!GetParam().config_text.empty()) {
    testing::WriteFile(dir.File("c.textproto"), GetParam().config_text);
    args.insert(args.begin(), {"--config", dir.File("c.textproto")});
  }
  args.push_back("--listen");
  args.push_back("127.0.0.1:" + std::to_string(FreePort()));
  pid_t pid = Spawn(args, dir.File("log"));
  EXPECT_EQ(WaitExit(pid, std::chrono::seconds(30)), 2);
  const std::string log = ReadAll(dir.File("log"));
  EXPECT_NE(log.find(GetParam().expected), std::string::npos) << log;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ServeStartErrorTest,
    ::testing::Values(
        BadStart{"UnknownField", "listen: \"127.0.0.1:1\"\nthreadz: 3\n", {}, "threadz"},
        BadStart{"BadValue", "model { dtype: \"float16\" }\n", {}, "model.dtype"},
        BadStart{"MissingConfigFile", "", {"--config", "/nonexistent/magma.textproto"}, "/nonexistent/magma.textproto"},
        BadStart{"BadFlagValue", "", {"--log_level", "loud"}, "log_level"},
        BadStart{"MissingModelDir", "", {"--model_dir", "/nonexistent/model"}, "/nonexistent/model"},
        BadStart{"ConfigIsADirectory", "", {"--config", "/tmp"}, "cannot read config file '/tmp': it is a directory"},
        BadStart{"PositionalArgument",
                 "",
                 {"configs/default.textproto"},
                 "unexpected argument 'configs/default.textproto' (a config file is given with --config)"},
        BadStart{"ErrorsShowAtAnyLogLevel",
                 "",
                 {"--log_level", "off", "--model_dir", "/nonexistent/model"},
                 "/nonexistent/model"}),
    [](const ::testing::TestParamInfo<BadStart>& info) { return info.param.name; });

// magma-cli refuses bad input with a message and an exit status, not an
// abort or a silent success.
TEST(CliProcessTest, RefusesBadInputWithAMessage) {
  testing::TempDir dir;
  auto preset = model::GetPreset("tiny");
  ASSERT_TRUE(preset.ok());
  ASSERT_TRUE(model::WriteRandomModel(*preset, 7, dir.File("m")).ok());
  ASSERT_TRUE(npy::Write(dir.File("ids.npy"), npy::FromInt64({3}, {1, 17, 44})).ok());
  struct Case {
    std::vector<std::string> args;
    int exit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {{"--log_level", "verbose", "inspect"}, 2, "--log_level"},
      {{"tokenize", "--model_dir", dir.File("m"), "--input", dir.path()}, 1, "it is a directory"},
      {{"generate", "--model_dir", dir.File("m"), "--input_ids", dir.File("ids.npy"), "--max_new_tokens", "0"},
       1,
       "--max_new_tokens must be in 1.."},
      {{"generate", "--model_dir", dir.File("m"), "--input_ids", dir.File("ids.npy"), "--max_new_tokens", "-5"},
       1,
       "got -5"},
      {{"generate", "--model_dir", dir.File("m"), "--input_ids", dir.path()}, 1, "it is a directory"},
      {{"init", "--out", dir.File("m")}, 1, "already holds checkpoint files"},
  };
  for (const Case& c : cases) {
    const pid_t pid = Spawn(c.args, dir.File("log"), kCli);
    EXPECT_EQ(WaitExit(pid, std::chrono::seconds(60)), c.exit) << c.args[0] << ": " << ReadAll(dir.File("log"));
    EXPECT_NE(ReadAll(dir.File("log")).find(c.expected), std::string::npos) << ReadAll(dir.File("log"));
  }
  // --overwrite replaces the checkpoint: another seed, other weights; the
  // first seed again, the first weights.
  const std::string weights = ReadAll(dir.File("m/model-00001-of-00004.safetensors"));
  for (const char* seed : {"8", "7"}) {
    const pid_t init = Spawn({"init", "--out", dir.File("m"), "--seed", seed, "--overwrite"}, dir.File("log"), kCli);
    EXPECT_EQ(WaitExit(init, std::chrono::seconds(60)), 0) << ReadAll(dir.File("log"));
    EXPECT_EQ(ReadAll(dir.File("m/model-00001-of-00004.safetensors")) == weights, std::string(seed) == "7") << seed;
  }
  // A good call still works: 2 new tokens.
  const pid_t pid =
      Spawn({"generate", "--model_dir", dir.File("m"), "--input_ids", dir.File("ids.npy"), "--max_new_tokens", "2"},
            dir.File("log"), kCli);
  EXPECT_EQ(WaitExit(pid, std::chrono::seconds(60)), 0) << ReadAll(dir.File("log"));
}

}  // namespace
}  // namespace magma
