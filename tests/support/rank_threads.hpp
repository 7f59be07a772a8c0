// Running one body per pipeline rank, each on its own thread, as the runtime
// and transport tests do; an exception on one rank is kept, not lost.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace dualpipe::test {

// Runs body(rank) for ranks 0..P-1, each on its own thread, and joins them
// all; returns each rank's exception (null where it returned normally).
inline std::vector<std::exception_ptr> on_ranks(int P, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(P));
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < P; ++r)
      threads.emplace_back([&, r] {
        try {
          body(r);
        } catch (...) {
          errors[static_cast<std::size_t>(r)] = std::current_exception();
        }
      });
  }
  return errors;
}

// Rethrows the lowest rank's exception, if any rank threw.
inline void rethrow_any(const std::vector<std::exception_ptr>& errors) {
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// The what() of a std::exception, or "?" for anything else thrown.
inline std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "?";
  }
}

}  // namespace dualpipe::test
