// Every schedule the library generates, at a spread of sizes, for tests that
// must hold on all of them (the simulator against its independent model, the
// renderers). Tables are compute-only: communication does not enter the cost
// model, and a separate test pins that.
#pragma once

#include <string>
#include <vector>

#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/table.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"

namespace test_catalogue {

struct entry {
  std::string name;
  dualpipe::schedule_table table;
};

// Ranks P up to `largest` (powers of two, and a few odd ones where the
// schedule allows), a few micro-batch counts per P.
inline std::vector<entry> all_schedules(int largest) {
  using namespace dualpipe;
  const generator_options compute_only{.forward_only = false, .with_communication = false};
  const generator_options inference{.forward_only = true, .with_communication = false};
  std::vector<entry> out;
  auto add = [&out](std::string name, int P, int N, schedule_table t) {
    out.push_back({name + " P=" + std::to_string(P) + " N=" + std::to_string(N), std::move(t)});
  };
  for (const int P : {2, 4, 6, 8, 16, 32}) {
    if (P > largest) continue;
    for (const int N : {2 * P, 2 * P + 2, 4 * P}) {
      if (P >= 16 && N != 2 * P) continue;
      add("dualpipe", P, N, schedules::dualpipe(P, N, compute_only));
    }
  }
  for (const int P : {2, 3, 4, 5, 8, 16, 32}) {
    if (P > largest) continue;
    for (const int N : {2 * P, 2 * P + 1, 3 * P}) {
      if (P >= 16 && N != 2 * P) continue;
      add("dualpipev", P, N, schedules::dualpipev(P, N, compute_only));
    }
  }
  for (const int P : {1, 2, 3, 4, 8, 16, 32}) {
    if (P > largest) continue;
    for (const int N : {P, 2 * P + 1, 3 * P}) {
      if (P >= 16 && N != 2 * P + 1) continue;
      add("gpipe", P, N, schedules::gpipe(P, N, compute_only));
      add("1f1b", P, N, schedules::one_f_one_b(P, N, compute_only));
      add("zb1p", P, N, schedules::zb1p(P, N, compute_only));
      add("zbv", P, N, schedules::zbv(P, N, compute_only));
    }
    for (const int V : {2, 3}) {
      if (P >= 16 && V == 3) continue;
      for (const int N : {P, 2 * P}) {
        if (P >= 16 && N != 2 * P) continue;
        add("interleaved-1f1b V=" + std::to_string(V), P, N,
            schedules::interleaved_1f1b(P, N, V, compute_only));
      }
    }
  }
  add("1f1b forward-only", 4, 6, schedules::one_f_one_b(4, 6, inference));
  add("zbv forward-only", 3, 5, schedules::zbv(3, 5, inference));
  add("dualpipe forward-only", 4, 10, schedules::dualpipe(4, 10, inference));
  add("dualpipev forward-only", 4, 9, schedules::dualpipev(4, 9, inference));
  return out;
}

}  // namespace test_catalogue
