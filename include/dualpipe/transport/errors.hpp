// The exceptions a pipeline step throws: a stage failed on this rank, another
// rank failed and stopped the pipeline, a transport waited too long or found
// a send and a receive that disagree. Every message names the rank and the
// instruction involved.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace dualpipe {

// Inside a catch block: the message of the exception being handled, or
// `otherwise` when it is not a std::exception. For errors that name the
// original and nest it (std::throw_with_nested).
[[nodiscard]] inline std::string handled_exception_text(const char* otherwise) {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return otherwise;
  }
}

// Base of every run-time pipeline failure. rank(): the rank that throws it.
class pipeline_error : public std::runtime_error {
 public:
  pipeline_error(int rank, const std::string& what) : std::runtime_error(what), rank_(rank) {}
  [[nodiscard]] int rank() const noexcept { return rank_; }

 private:
  int rank_;
};

// A user stage or loss function threw on this rank. The original exception is
// nested (std::rethrow_if_nested reaches it); what() names the rank, the
// instruction and the original message.
class stage_error : public pipeline_error {
 public:
  using pipeline_error::pipeline_error;
};

// A transport waited longer than its timeout; what() names the instruction
// the rank was waiting on.
class transport_timeout : public pipeline_error {
 public:
  using pipeline_error::pipeline_error;
};

// A send and a receive that are matched disagree (different stage or
// payload), or a transport was used out of protocol.
class transport_error : public pipeline_error {
 public:
  using pipeline_error::pipeline_error;
};

// Another rank failed and stopped the pipeline; this rank was woken from a
// wait. origin_rank() and origin_what() are that rank and its own error.
class pipeline_aborted : public pipeline_error {
 public:
  pipeline_aborted(int rank, int origin_rank, const std::string& origin_what,
                   const std::string& what)
      : pipeline_error(rank, what), origin_rank_(origin_rank), origin_what_(origin_what) {}
  [[nodiscard]] int origin_rank() const noexcept { return origin_rank_; }
  [[nodiscard]] const std::string& origin_what() const noexcept { return origin_what_; }

 private:
  int origin_rank_;
  std::string origin_what_;
};

}  // namespace dualpipe
