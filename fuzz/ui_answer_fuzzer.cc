// Fuzzes ParseUiAnswer against a fixed mark table: no crash, errors name a
// position in the text, and every accepted click lies in the image.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "magma/agent/ui_answer.h"

namespace {

std::vector<magma::vision::Mark> Table() {
  std::vector<magma::vision::Mark> marks;
  const magma::vision::PixelBox boxes[] = {{10, 10, 110, 60}, {200, 100, 400, 300}, {220, 120, 260, 160}};
  for (int i = 0; i < 3; ++i) {
    magma::vision::Mark m;
    m.id = i;
    m.box = boxes[i];
    m.centre = boxes[i].centre();
    marks.push_back(m);
  }
  return marks;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<magma::vision::Mark> marks = Table();
  static const magma::vision::ImageFrame frame = *magma::vision::ImageFrame::Create({1000, 500}, {500, 250});
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto answer = magma::agent::ParseUiAnswer(text, marks, frame);
  if (!answer.ok()) {
    magma::fuzz::CheckParseError(answer.status(), text.size());
    return 0;
  }
  FUZZ_CHECK(answer->position < text.size());
  FUZZ_CHECK(answer->click.x >= 0 && answer->click.x <= 1000 && answer->click.y >= 0 && answer->click.y <= 500);
  FUZZ_CHECK(answer->click_norm.x >= 0 && answer->click_norm.x <= 1);
  if (answer->rule == magma::agent::UiRule::kMark) FUZZ_CHECK(answer->mark.has_value() && *answer->mark < 3);
  return 0;
}
