// The SVG timeline: well-formed XML, one cell group per compute instruction in
// its kind's colour, micro-batch numbers, idle time left white, a legend of
// the kinds present.
#include <catch2/catch.hpp>

#include <cctype>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/io/svg.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#include "hand_tables.hpp"
#include "schedule_catalogue.hpp"

using namespace dualpipe;

namespace {

struct element {
  std::string name;
  std::map<std::string, std::string> attributes;
  std::string text;  // character data directly inside it (entities kept as written)
  std::vector<element> children;
};

// A small XML reader for what the writer may produce: a declaration,
// elements with double-quoted attributes, text with the five predefined
// entities. Throws on anything else, in particular on unbalanced tags.
class xml_reader {
 public:
  explicit xml_reader(std::string_view s) : s_(s) {}

  element document() {
    skip_space();
    if (s_.substr(pos_, 5) == "<?xml") {
      pos_ = s_.find("?>", pos_);
      if (pos_ == std::string_view::npos) error("unterminated declaration");
      pos_ += 2;
    }
    skip_space();
    element root = read_element();
    skip_space();
    if (pos_ != s_.size()) error("content after the root element");
    return root;
  }

 private:
  [[noreturn]] void error(const std::string& why) const {
    throw std::runtime_error("xml: " + why + " at offset " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r'))
      ++pos_;
  }
  std::string read_name() {
    const std::size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) ||
                                s_[pos_] == '-' || s_[pos_] == '_' || s_[pos_] == ':'))
      ++pos_;
    if (pos_ == start) error("expected a name");
    return std::string(s_.substr(start, pos_ - start));
  }
  void check_entities(std::string_view text) const {
    for (std::size_t i = text.find('&'); i != std::string_view::npos; i = text.find('&', i + 1)) {
      const auto end = text.find(';', i);
      if (end == std::string_view::npos) error("an unterminated entity");
      const std::string_view entity = text.substr(i, end - i + 1);
      if (entity != "&amp;" && entity != "&lt;" && entity != "&gt;" && entity != "&quot;" &&
          entity != "&apos;")
        error("an unknown entity " + std::string(entity));
    }
    if (text.find('<') != std::string_view::npos) error("a raw '<' in text");
  }
  element read_element() {
    if (pos_ >= s_.size() || s_[pos_] != '<') error("expected '<'");
    ++pos_;
    element e;
    e.name = read_name();
    for (;;) {
      skip_space();
      if (pos_ >= s_.size()) error("unterminated start tag");
      if (s_.substr(pos_, 2) == "/>") {
        pos_ += 2;
        return e;
      }
      if (s_[pos_] == '>') {
        ++pos_;
        break;
      }
      const std::string attribute = read_name();
      if (e.attributes.count(attribute)) error("a repeated attribute " + attribute);
      if (pos_ + 1 >= s_.size() || s_[pos_] != '=' || s_[pos_ + 1] != '"') error("expected =\"");
      pos_ += 2;
      const auto close = s_.find('"', pos_);
      if (close == std::string_view::npos) error("unterminated attribute");
      const std::string_view value = s_.substr(pos_, close - pos_);
      check_entities(value);
      e.attributes[attribute] = std::string(value);
      pos_ = close + 1;
    }
    for (;;) {
      const auto next = s_.find('<', pos_);
      if (next == std::string_view::npos) error("unterminated element " + e.name);
      const std::string_view text = s_.substr(pos_, next - pos_);
      check_entities(text);
      e.text += std::string(text);
      pos_ = next;
      if (s_.substr(pos_, 2) == "</") {
        pos_ += 2;
        const std::string closing = read_name();
        if (closing != e.name) error("</" + closing + "> closes <" + e.name + ">");
        skip_space();
        if (pos_ >= s_.size() || s_[pos_] != '>') error("expected '>'");
        ++pos_;
        return e;
      }
      e.children.push_back(read_element());
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

void collect(const element& e, const std::string& name, std::vector<const element*>& out) {
  if (e.name == name) out.push_back(&e);
  for (const element& c : e.children) collect(c, name, out);
}

const element* find_id(const element& e, const std::string& id) {
  const auto it = e.attributes.find("id");
  if (it != e.attributes.end() && it->second == id) return &e;
  for (const element& c : e.children)
    if (const element* f = find_id(c, id)) return f;
  return nullptr;
}

std::string class_of(op k) {
  switch (k) {
    case op::forward:
      return "forward";
    case op::backward:
      return "backward";
    case op::backward_input:
      return "backward-input";
    case op::backward_weight:
      return "backward-weight";
    default:
      return "overlapped";
  }
}

}  // namespace

TEST_CASE("the XML reader used here rejects broken documents") {
  REQUIRE_NOTHROW(xml_reader("<a x=\"1\"><b/>t &amp; u</a>").document());
  REQUIRE_THROWS(xml_reader("<a><b></a></b>").document());
  REQUIRE_THROWS(xml_reader("<a>x & y</a>").document());
  REQUIRE_THROWS(xml_reader("<a x=1/>").document());
  REQUIRE_THROWS(xml_reader("<a></a><b/>").document());
}

TEST_CASE("every schedule's picture is well-formed, with one cell per compute") {
  for (const auto& entry : test_catalogue::all_schedules(8)) {
    INFO(entry.name);
    const simulation s = simulate(entry.table, cost_model{1.0, 2.0, 1.0, 2.5, 0.0});
    const std::string svg = format_svg(s, {.title = "a & b <c>"});
    const element root = xml_reader(svg).document();
    REQUIRE(root.name == "svg");
    REQUIRE(root.attributes.at("xmlns") == "http://www.w3.org/2000/svg");
    const element* timeline = find_id(root, "timeline");
    REQUIRE(timeline != nullptr);
    // Cells in table order, each of its instruction's kind, with a tooltip
    // naming the rank and action.
    std::vector<std::pair<std::string, std::string>> want;
    std::map<std::string, int> kinds;
    for (int r = 0; r < entry.table.view().ranks(); ++r)
      for (const instruction& x : entry.table.rank(r))
        if (x.kind <= op::overlapped_forward_backward) {
          want.emplace_back(class_of(x.kind),
                            "rank " + std::to_string(r) + ": " + format_action(x));
          ++kinds[class_of(x.kind)];
        }
    REQUIRE(timeline->children.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      const element& cell = timeline->children[i];
      REQUIRE(cell.name == "g");
      REQUIRE(cell.attributes.at("class") == want[i].first);
      REQUIRE(cell.children.at(0).name == "title");
      REQUIRE(cell.children.at(0).text.rfind(want[i].second, 0) == 0);
    }
    // The legend names exactly the kinds present.
    const element* legend = find_id(root, "legend");
    REQUIRE(legend != nullptr);
    std::vector<const element*> texts;
    collect(*legend, "text", texts);
    REQUIRE(texts.size() == kinds.size());
  }
}

TEST_CASE("a hand-made timeline: colours, numbers, white idle time, legend") {
  const schedule_table t = test::two_ranks_with_overlap();
  const simulation s =
      simulate(t, cost_model{.forward = 1, .backward = 2, .weight = 1, .overlapped = 3});
  const svg_options options{.unit = 10.0, .row_height = 20.0, .forward_share = 0.25};
  const element root = xml_reader(format_svg(s, options)).document();
  const element* timeline = find_id(root, "timeline");
  REQUIRE(timeline != nullptr);
  REQUIRE(timeline->children.size() == 8);

  // Each cell's filled area (rects other than the pair's outline) spans its
  // duration: the rest of the row is the white background.
  std::map<std::string, std::set<std::string>> fills;  // class -> fill colours
  double rank1_width = 0.0;
  for (std::size_t i = 0; i < timeline->children.size(); ++i) {
    const element& cell = timeline->children[i];
    double width = 0.0;
    for (const element& c : cell.children)
      if (c.name == "rect" && c.attributes.at("fill") != "none") {
        width += std::stod(c.attributes.at("width"));
        fills[cell.attributes.at("class")].insert(c.attributes.at("fill"));
      }
    const timed_instruction& e = s.timeline[i];
    REQUIRE(width == Approx((e.end - e.start) * 10.0));
    if (e.rank == 1) rank1_width += width;
  }
  REQUIRE(rank1_width == Approx(s.ranks[1].busy * 10.0));
  // F, B, I, W each have one colour, all different; the pair shows F's and B's.
  std::set<std::string> single;
  for (const std::string k : {"forward", "backward", "backward-input", "backward-weight"}) {
    REQUIRE(fills[k].size() == 1);
    single.insert(*fills[k].begin());
  }
  REQUIRE(single.size() == 4);
  REQUIRE(single.count("#FFFFFF") == 0);
  REQUIRE(fills["overlapped"] ==
          std::set<std::string>{*fills["forward"].begin(), *fills["backward"].begin()});
  // The pair's forward part is a quarter of its width.
  const element& pair = timeline->children[5];
  REQUIRE(std::stod(pair.children.at(1).attributes.at("width")) == Approx(3.0 * 10.0 * 0.25));

  // Micro-batch numbers: the pair shows both of its micro-batches.
  std::vector<const element*> pair_texts;
  collect(pair, "text", pair_texts);
  REQUIRE(pair_texts.size() == 2);
  REQUIRE(pair_texts[0]->text == "1");
  REQUIRE(pair_texts[1]->text == "0");

  // The rows' background is white (directly, or through the time-unit tile).
  const element* ranks = find_id(root, "ranks");
  REQUIRE(ranks != nullptr);
  std::vector<const element*> rows;
  collect(*ranks, "rect", rows);
  REQUIRE(rows.size() == 2);
  REQUIRE(rows[0]->attributes.at("fill") == "url(#time-units)");
  const element* tile = find_id(root, "time-units");
  REQUIRE(tile != nullptr);
  REQUIRE(tile->children.at(0).attributes.at("fill") == "#FFFFFF");
  REQUIRE(std::stod(rows[0]->attributes.at("width")) == Approx(s.makespan * 10.0));

  // Legend: all five kinds occur here.
  const element* legend = find_id(root, "legend");
  REQUIRE(legend != nullptr);
  std::vector<const element*> labels;
  collect(*legend, "text", labels);
  std::set<std::string> names;
  for (const element* l : labels) names.insert(l->text);
  REQUIRE(names == std::set<std::string>{"Forward", "Backward", "Backward for input",
                                         "Backward for weights",
                                         "Overlapped forward &amp; backward"});

  // Without a legend or a grid.
  const element plain = xml_reader(format_svg(s, {.legend = false, .unit_grid = false})).document();
  REQUIRE(find_id(plain, "legend") == nullptr);
  REQUIRE(find_id(plain, "time-units") == nullptr);
}

TEST_CASE("a compute-only 1-rank timeline has only the kinds it uses in its legend") {
  schedule_table t({schedule_kind::custom, 1, 1, 1, placement::linear, false, false});
  t.push(make_forward(0, 0));
  t.push(make_backward(0, 0));
  t.end_rank();
  const element root = xml_reader(format_svg(simulate(t))).document();
  const element* legend = find_id(root, "legend");
  REQUIRE(legend != nullptr);
  std::vector<const element*> labels;
  collect(*legend, "text", labels);
  REQUIRE(labels.size() == 2);
  REQUIRE(labels[0]->text == "Forward");
  REQUIRE(labels[1]->text == "Backward");
}

TEST_CASE("with the schedule known, numbers on a micro-batch's second leg are white") {
  for (const bool v : {false, true}) {
    const auto t = v ? schedules::dualpipev(2, 4, {.with_communication = false})
                     : schedules::dualpipe(2, 4, {.with_communication = false});
    INFO(t.info().kind.name);
    const simulation s = simulate(t, cost_model{1, 2, 1, 3, 0});
    const element root = xml_reader(format_svg(s, {.schedule = t.info()})).document();
    const element* timeline = find_id(root, "timeline");
    REQUIRE(timeline != nullptr);
    REQUIRE(timeline->children.size() == s.timeline.size());
    int white = 0, black = 0;
    for (std::size_t i = 0; i < s.timeline.size(); ++i) {
      const instruction& x = s.timeline[i].what;
      std::vector<const element*> texts;
      collect(timeline->children[i], "text", texts);
      // DualPipe: micro-batches N/2.. travel back; DualPipeV: stages P.. are the way back.
      std::vector<bool> second = {v ? x.stage >= 2 : x.microbatch >= 2};
      if (x.kind == op::overlapped_forward_backward)
        second.push_back(v ? x.stage_b >= 2 : x.microbatch_b >= 2);
      REQUIRE(texts.size() == second.size());
      for (std::size_t k = 0; k < texts.size(); ++k) {
        const auto fill = texts[k]->attributes.find("fill");
        const bool is_white = fill != texts[k]->attributes.end() && fill->second == "#FFFFFF";
        REQUIRE(is_white == second[k]);
        (is_white ? white : black) += 1;
      }
    }
    REQUIRE(white > 0);
    REQUIRE(black > 0);
  }
  // Without the schedule, every number is black.
  const simulation s = simulate(schedules::dualpipe(2, 4, {.with_communication = false}));
  REQUIRE(format_svg(s).find("fill=\"#FFFFFF\">") == std::string::npos);
}
