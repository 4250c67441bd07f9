#include "magma/vision/propose.h"

#include <iostream>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <opencv2/imgproc.hpp>

namespace magma::vision {
namespace {

// Synthetic screenshots with known widget boxes: a top bar, a side bar and
// a content area in a light or dark theme, holding buttons, text fields,
// links, icons and checkboxes whose true boxes are recorded as drawn.
struct Screen {
  cv::Mat rgb;
  std::vector<cv::Rect> widgets;
};

class ScreenMaker {
 public:
  explicit ScreenMaker(uint32_t seed) : rng_(seed) {}

  Screen Make(int w, int h) {
    Screen s;
    const bool dark = Uniform(0, 1) == 1;
    const cv::Scalar bg = dark ? cv::Scalar(32, 33, 36) : cv::Scalar(245, 246, 248);
    const cv::Scalar bar = dark ? cv::Scalar(55, 60, 70) : cv::Scalar(40, 70, 120);
    const cv::Scalar side = dark ? cv::Scalar(44, 46, 50) : cv::Scalar(228, 231, 236);
    s.rgb = cv::Mat(h, w, CV_8UC3, bg);
    const int bar_h = 48, side_w = w / 6;
    const cv::Rect regions[3] = {
        {0, 0, w, bar_h}, {0, bar_h, side_w, h - bar_h}, {side_w, bar_h, w - side_w, h - bar_h}};
    cv::rectangle(s.rgb, regions[0], bar, cv::FILLED);
    cv::rectangle(s.rgb, regions[1], side, cv::FILLED);
    const cv::Scalar region_bg[3] = {bar, side, bg};
    std::vector<cv::Rect> taken;
    for (int attempt = 0; attempt < 400 && s.widgets.size() < 36; ++attempt) {
      const int region = Uniform(0, 9) == 0 ? 0 : (Uniform(0, 3) == 0 ? 1 : 2);
      const int kind = Uniform(0, 4);
      cv::Size size = SizeOf(kind);
      const cv::Rect& r = regions[region];
      if (size.width + 12 > r.width || size.height + 12 > r.height) continue;
      const cv::Rect box(r.x + 6 + Uniform(0, r.width - size.width - 12),
                         r.y + 6 + Uniform(0, r.height - size.height - 12), size.width, size.height);
      // Keep 14 px between widgets (checkbox labels included).
      const cv::Rect reserve(box.x - 14, box.y - 14, box.width + 28 + (kind == 4 ? 90 : 0), box.height + 28);
      bool clash = false;
      for (const cv::Rect& t : taken) clash = clash || (t & reserve).area() > 0;
      if (clash || reserve.br().x > r.br().x) continue;
      const cv::Rect truth = Draw(kind, box, region_bg[region], dark, &s.rgb);
      taken.push_back(reserve);
      s.widgets.push_back(truth);
    }
    return s;
  }

 private:
  int Uniform(int lo, int hi) { return lo + static_cast<int>(rng_() % static_cast<uint32_t>(hi - lo + 1)); }

  cv::Size SizeOf(int kind) {
    switch (kind) {
      case 0:  // button
        return {Uniform(70, 180), Uniform(26, 40)};
      case 1:  // text field
        return {Uniform(150, 300), Uniform(26, 34)};
      case 2: {  // link
        link_word_ = Word();
        link_scale_ = 0.45 + 0.05 * Uniform(0, 3);
        int baseline = 0;
        const cv::Size t = cv::getTextSize(link_word_, cv::FONT_HERSHEY_SIMPLEX, link_scale_, 1, &baseline);
        return {t.width + 2, 22};
      }
      case 3: {  // icon
        const int d = Uniform(16, 28);
        return {d, d};
      }
      default:  // checkbox
        return {14, 14};
    }
  }

  std::string Word() {
    static const char* kWords[] = {"OK",        "Submit",  "Cancel", "Search",   "Settings", "Open file",  "Save",
                                   "Next page", "Sign in", "Help",   "Download", "Profile",  "Export CSV", "More"};
    return kWords[Uniform(0, 13)];
  }

  cv::Scalar Accent() {
    static const cv::Scalar kAccents[] = {{26, 115, 232}, {52, 168, 83}, {234, 67, 53}, {251, 188, 4},
                                          {103, 58, 183}, {0, 150, 136}, {96, 125, 139}};
    return kAccents[Uniform(0, 6)];
  }

  // Returns the true box of what was drawn.
  cv::Rect Draw(int kind, cv::Rect box, const cv::Scalar& bg, bool dark, cv::Mat* img) {
    const cv::Scalar fg = dark ? cv::Scalar(230, 230, 230) : cv::Scalar(30, 30, 30);
    switch (kind) {
      case 0: {
        const cv::Scalar fill = Accent();
        cv::rectangle(*img, box, fill, cv::FILLED);
        if (Uniform(0, 1)) cv::rectangle(*img, box, fill * 0.7, 1);
        Text(Word(), box, cv::Scalar(255, 255, 255), true, img);
        return box;
      }
      case 1: {
        cv::rectangle(*img, box, dark ? cv::Scalar(60, 62, 66) : cv::Scalar(255, 255, 255), cv::FILLED);
        cv::rectangle(*img, box, cv::Scalar(150, 150, 150), 1);
        Text(Word(), box, cv::Scalar(140, 140, 140), false, img);
        return box;
      }
      case 2: {
        const double scale = link_scale_;
        const std::string& word = link_word_;
        cv::Mat mask = cv::Mat::zeros(img->size(), CV_8UC1);
        const cv::Point org(box.x, box.y + 16);
        cv::putText(mask, word, org, cv::FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv::LINE_AA);
        cv::putText(*img, word, org, cv::FONT_HERSHEY_SIMPLEX, scale, dark ? cv::Scalar(138, 180, 248) : Accent(), 1,
                    cv::LINE_AA);
        return cv::boundingRect(mask);
      }
      case 3: {
        const int d = box.width;
        const cv::Rect icon(box.x, box.y, d, d);
        const cv::Scalar c = Accent();
        if (Uniform(0, 1)) {
          cv::circle(*img, {icon.x + d / 2, icon.y + d / 2}, d / 2, c, cv::FILLED, cv::LINE_8);
          return cv::Rect(icon.x + d / 2 - d / 2, icon.y + d / 2 - d / 2, 2 * (d / 2) + 1, 2 * (d / 2) + 1);
        }
        cv::rectangle(*img, icon, c, cv::FILLED);
        return icon;
      }
      default: {
        cv::rectangle(*img, box, bg, cv::FILLED);
        cv::rectangle(*img, box, fg, 1);
        if (Uniform(0, 1)) cv::line(*img, {box.x + 3, box.y + 7}, {box.x + 6, box.y + 11}, fg, 2);
        cv::putText(*img, Word(), {box.x + 22, box.y + 12}, cv::FONT_HERSHEY_SIMPLEX, 0.45, fg, 1, cv::LINE_AA);
        return box;
      }
    }
  }

  void Text(const std::string& word, const cv::Rect& box, const cv::Scalar& colour, bool centred, cv::Mat* img) {
    int baseline = 0;
    const double scale = 0.5;
    const cv::Size t = cv::getTextSize(word, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &baseline);
    const int x = centred ? box.x + (box.width - t.width) / 2 : box.x + 8;
    cv::putText(*img, word, {std::max(box.x + 2, x), box.y + (box.height + t.height) / 2}, cv::FONT_HERSHEY_SIMPLEX,
                scale, colour, 1, cv::LINE_AA);
  }

  std::mt19937 rng_;
  std::string link_word_;  // chosen with the link's size
  double link_scale_ = 0.5;
};

double BestIoU(const cv::Rect& truth, const std::vector<PixelBox>& proposals) {
  const PixelBox t{static_cast<double>(truth.x), static_cast<double>(truth.y), static_cast<double>(truth.br().x),
                   static_cast<double>(truth.br().y)};
  double best = 0;
  for (const PixelBox& p : proposals) best = std::max(best, IoU(t, p));
  return best;
}

// Recall at IoU 0.5 over synthetic screens; the figure is printed for the
// record. The bar sits a little under what the proposer reaches, so a
// regression in any widget kind shows.
TEST(ProposeTest, RecallOnSyntheticScreens) {
  constexpr int kScreens = 12;
  int found = 0, total = 0;
  size_t proposals = 0;
  for (int i = 0; i < kScreens; ++i) {
    ScreenMaker maker(1000 + i);
    const Screen s = maker.Make(1280, 800);
    auto boxes = ProposeElements(s.rgb);
    ASSERT_TRUE(boxes.ok()) << boxes.status();
    proposals += boxes->size();
    for (const cv::Rect& w : s.widgets) {
      ++total;
      found += BestIoU(w, *boxes) >= 0.5 ? 1 : 0;
    }
  }
  const double recall = static_cast<double>(found) / total;
  std::cout << "proposer recall@0.5: " << recall << " (" << found << "/" << total << " widgets, " << kScreens
            << " screens, " << proposals << " proposals)\n";
  RecordProperty("recall_at_0_5", std::to_string(recall));
  EXPECT_GE(total, 250);
  EXPECT_GE(recall, 0.90);
  // Not a flood of boxes: at most 3 proposals per true widget on average.
  EXPECT_LE(proposals, 3u * total);
}

TEST(ProposeTest, FindsAButtonAndAFieldExactly) {
  cv::Mat img(480, 640, CV_8UC3, cv::Scalar(250, 250, 250));
  cv::rectangle(img, cv::Rect(20, 30, 100, 32), cv::Scalar(26, 115, 232), cv::FILLED);
  cv::putText(img, "Send", {45, 52}, cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  cv::rectangle(img, cv::Rect(20, 100, 200, 28), cv::Scalar(150, 150, 150), 1);
  auto boxes = ProposeElements(img);
  ASSERT_TRUE(boxes.ok());
  EXPECT_GE(BestIoU(cv::Rect(20, 30, 100, 32), *boxes), 0.9);
  EXPECT_GE(BestIoU(cv::Rect(20, 100, 200, 28), *boxes), 0.9);
  // Sorted top to bottom.
  for (size_t i = 1; i < boxes->size(); ++i) EXPECT_LE((*boxes)[i - 1].y1, (*boxes)[i].y1);
}

// A screen full of labelled buttons: each is found once, with its label
// merged into it, across every part of the image (de-duplication looks only
// at boxes near each candidate).
TEST(ProposeTest, ManyButtonsAreEachFoundOnce) {
  cv::Mat img(768, 1024, CV_8UC3, cv::Scalar(250, 250, 250));
  std::vector<cv::Rect> buttons;
  for (int row = 0; row < 12; ++row) {
    for (int col = 0; col < 12; ++col) {
      const cv::Rect b(20 + col * 82, 20 + row * 60, 56, 26);
      cv::rectangle(img, b, cv::Scalar(26, 115, 232), cv::FILLED);
      cv::putText(img, "Go", {b.x + 16, b.y + 18}, cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar(255, 255, 255), 1,
                  cv::LINE_AA);
      buttons.push_back(b);
    }
  }
  auto boxes = ProposeElements(img);
  ASSERT_TRUE(boxes.ok());
  EXPECT_EQ(boxes->size(), buttons.size());
  for (const cv::Rect& b : buttons) EXPECT_GE(BestIoU(b, *boxes), 0.85) << b;
}

TEST(ProposeTest, BlankImageHasNoElements) {
  cv::Mat img(100, 100, CV_8UC3, cv::Scalar(40, 40, 40));
  auto boxes = ProposeElements(img);
  ASSERT_TRUE(boxes.ok());
  EXPECT_TRUE(boxes->empty());
}

TEST(ProposeTest, RejectsBadInput) {
  EXPECT_FALSE(ProposeElements(cv::Mat()).ok());
  EXPECT_FALSE(ProposeElements(cv::Mat(10, 10, CV_8UC1)).ok());
  ProposeOptions bad;
  bad.max_extent = 0;
  EXPECT_FALSE(ProposeElements(cv::Mat(10, 10, CV_8UC3), bad).ok());
}

}  // namespace
}  // namespace magma::vision
