// Every schedule the library generates, at a spread of sizes, for tests that
// must hold on all of them (the simulator against its independent model, the
// renderers). Tables are compute-only: communication does not enter the cost
// model, and a separate test pins that.
#pragma once

#include <string>
#include <vector>

#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/table.hpp"

namespace test_catalogue {

struct entry {
  std::string name;
  dualpipe::schedule_table table;
};

// Ranks P from 2 to max_ranks (powers of two, and a few odd ones where the
// schedule allows), a few micro-batch counts per P.
inline std::vector<entry> all_schedules(int max_ranks) {
  using namespace dualpipe;
  const generator_options compute_only{.forward_only = false, .with_communication = false};
  const generator_options inference{.forward_only = true, .with_communication = false};
  std::vector<entry> out;
  auto add = [&out](std::string name, int P, int N, schedule_table t) {
    out.push_back({name + " P=" + std::to_string(P) + " N=" + std::to_string(N), std::move(t)});
  };
  for (const int P : {2, 4, 6, 8, 16, 32}) {
    if (P > max_ranks) continue;
    for (const int N : {2 * P, 2 * P + 2, 4 * P}) {
      if (P >= 16 && N != 2 * P) continue;
      add("dualpipe", P, N, schedules::dualpipe(P, N, compute_only));
    }
  }
  for (const int P : {2, 3, 4, 5, 8, 16, 32}) {
    if (P > max_ranks) continue;
    for (const int N : {2 * P, 2 * P + 1, 3 * P}) {
      if (P >= 16 && N != 2 * P) continue;
      add("dualpipev", P, N, schedules::dualpipev(P, N, compute_only));
    }
  }
  add("dualpipe forward-only", 4, 10, schedules::dualpipe(4, 10, inference));
  add("dualpipev forward-only", 4, 9, schedules::dualpipev(4, 9, inference));
  return out;
}

}  // namespace test_catalogue
