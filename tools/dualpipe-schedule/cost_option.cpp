// Parsing of --cost.
#include "cost_option.hpp"

#include <charconv>
#include <cmath>
#include <sstream>
#include <system_error>

#include "usage_error.hpp"

namespace dualpipe::cli {

void add_cost_option(CLI::App& app, std::string& spec) {
  app.add_option("--cost", spec,
                 "Cost model for the simulation, e.g. F=1,B=2,W=1,FB=2.5,comm=0: forward, full "
                 "backward, its weight part (I = B - W), an overlapped F&B pair, latency between "
                 "ranks. Defaults F=1,B=2,W=1,comm=0 and FB=F+B")
      ->type_name("COSTS");
}

cost_model parse_cost(std::string_view spec) {
  cost_model costs;
  bool overlapped_given = false;
  std::size_t pos = 0;
  while (pos < spec.size()) {
    std::size_t end = spec.find(',', pos);
    if (end == std::string_view::npos) end = spec.size();
    const std::string_view item = spec.substr(pos, end - pos);
    const std::size_t equals = item.find('=');
    if (equals == std::string_view::npos)
      throw usage_error("--cost: expected KEY=VALUE, found '" + std::string(item) + "'");
    const std::string_view key = item.substr(0, equals);
    const std::string_view text = item.substr(equals + 1);
    double value = 0.0;
    const auto [stop, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc{} || stop != text.data() + text.size() ||
        !std::isfinite(value) || value < 0.0)
      throw usage_error("--cost: " + std::string(key) + " must be a non-negative number, found '" +
                        std::string(text) + "'");
    if (key == "F")
      costs.forward = value;
    else if (key == "B")
      costs.backward = value;
    else if (key == "W")
      costs.weight = value;
    else if (key == "FB" || key == "F&B") {
      costs.overlapped = value;
      overlapped_given = true;
    } else if (key == "comm")
      costs.comm = value;
    else
      throw usage_error("--cost: unknown key '" + std::string(key) +
                        "' (known: F, B, W, FB, comm)");
    pos = end + 1;
  }
  if (!overlapped_given) costs.overlapped = costs.forward + costs.backward;
  if (costs.weight > costs.backward)
    throw usage_error("--cost: W exceeds B (the backward-input I = B - W would be negative)");
  return costs;
}

std::string describe_cost(const cost_model& c) {
  std::ostringstream out;
  out << "F=" << c.forward << " B=" << c.backward << " W=" << c.weight << " FB=" << c.overlapped
      << " comm=" << c.comm;
  return out.str();
}

}  // namespace dualpipe::cli
