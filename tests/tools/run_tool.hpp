// What the tool tests share: run the built dualpipe-schedule binary (its path
// in $DUALPIPE_SCHEDULE, set by meson) with some arguments and capture its
// exit status, stdout and stderr; and temporary input files.
#pragma once

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace tool_test {

struct tool_run {
  int status = -1;  // the exit status, or -1 if the tool did not exit normally
  std::string out;
  std::string err;
};

// `s` as one single-quoted word for /bin/sh.
inline std::string shell_quote(const std::string& s) {
  std::string quoted = "'";
  for (const char c : s) {
    if (c == '\'')
      quoted += "'\\''";
    else
      quoted.push_back(c);
  }
  return quoted + "'";
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// A file under /tmp holding `content`, removed when it goes out of scope.
struct temporary_file {
  std::string path;
  explicit temporary_file(const std::string& content) {
    char name[] = "/tmp/dualpipe_tool_test_XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    path = name;
    std::ofstream(path, std::ios::binary) << content;
  }
  ~temporary_file() { std::remove(path.c_str()); }
  temporary_file(const temporary_file&) = delete;
  temporary_file& operator=(const temporary_file&) = delete;
};

// Runs the tool with `args` (each shell-quoted).
inline tool_run run_tool(const std::vector<std::string>& args) {
  const char* tool = std::getenv("DUALPIPE_SCHEDULE");
  if (tool == nullptr) FAIL("DUALPIPE_SCHEDULE is not set: run this test through meson test");
  const temporary_file out(""), err("");
  std::string command = shell_quote(tool);
  for (const std::string& a : args) command += " " + shell_quote(a);
  command += " >" + shell_quote(out.path) + " 2>" + shell_quote(err.path);
  const int raw = std::system(command.c_str());
  tool_run result;
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  result.out = read_file(out.path);
  result.err = read_file(err.path);
  return result;
}

}  // namespace tool_test
