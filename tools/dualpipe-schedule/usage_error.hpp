// The tool's error for bad usage (an unknown name, a missing option, a value
// out of range): main reports it as one line on stderr and exits with 2.
#pragma once

#include <stdexcept>

namespace dualpipe::cli {

class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dualpipe::cli
