// `dualpipe-schedule validate`: checks a schedule (--schedule ... or --input
// FILE.csv) with dualpipe::validate and prints "ok" (exit 0) or the first
// violation as a sentence (exit 1).
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "dualpipe/analysis/validate.hpp"
#include "table_source.hpp"

namespace dualpipe::cli {

std::function<int()> attach_validate(CLI::App& sub) {
  auto source = std::make_shared<table_source>();
  add_table_source_options(sub, *source);
  sub.footer(
      "Exit status: 0 valid, 1 invalid (the first violation is printed), 2 bad usage or "
      "malformed CSV.");
  return [source]() {
    const schedule_table table = build_table(*source);
    const validation v = validate(table);
    std::cout << describe(v) << '\n';
    std::cout.flush();
    return v.ok ? 0 : 1;
  };
}

}  // namespace dualpipe::cli
