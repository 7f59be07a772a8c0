// NCCL unique-id bootstrap: ncclGetUniqueId needs no GPU, so sharing the id
// through a file or an environment variable is tested on every machine.
#include <catch2/catch.hpp>

#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include "dualpipe/transport/nccl.hpp"

namespace nccl = dualpipe::nccl;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed afterwards.
struct scratch_dir {
  fs::path path;
  scratch_dir() {
    path = fs::temp_directory_path() /
           ("dualpipe-nccl-" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(path);
  }
  ~scratch_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

bool same_bytes(const ncclUniqueId& a, const ncclUniqueId& b) {
  return std::memcmp(a.internal, b.internal, sizeof a.internal) == 0;
}

}  // namespace

TEST_CASE("unique id hex encoding: two digits per byte, round trip") {
  ncclUniqueId id{};
  for (std::size_t i = 0; i < sizeof id.internal; ++i)
    id.internal[i] = static_cast<char>((i * 37 + 11) & 0xFF);
  const std::string hex = nccl::unique_id_to_hex(id);
  REQUIRE(hex.size() == 2 * NCCL_UNIQUE_ID_BYTES);
  // Byte 0 is 11 = 0x0b, byte 1 is 48 = 0x30, byte 7 is 270 & 0xFF = 0x0e.
  CHECK(hex.substr(0, 4) == "0b30");
  CHECK(hex.substr(14, 2) == "0e");
  CHECK(same_bytes(nccl::unique_id_from_hex(hex), id));
  // Upper case and a trailing newline (what `echo` writes) are accepted.
  std::string upper = hex;
  for (char& c : upper)
    if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 'a' + 'A');
  CHECK(same_bytes(nccl::unique_id_from_hex(upper + "\n"), id));
}

TEST_CASE("unique id hex decoding names what is wrong") {
  CHECK_THROWS_WITH(nccl::unique_id_from_hex("abc"),
                    Catch::Contains("256 hex digits, got 3 characters"));
  std::string bad(2 * NCCL_UNIQUE_ID_BYTES, '0');
  bad[17] = 'g';
  CHECK_THROWS_WITH(nccl::unique_id_from_hex(bad),
                    Catch::Contains("non-hex character 'g' at position 17"));
}

TEST_CASE("ncclGetUniqueId works without a GPU and ids differ") {
  const ncclUniqueId a = nccl::new_unique_id();
  const ncclUniqueId b = nccl::new_unique_id();
  CHECK_FALSE(same_bytes(a, b));
}

TEST_CASE("unique id through a file: rank 0 publishes, the others read the same bytes") {
  scratch_dir dir;
  const fs::path path = dir.path / "nccl-id";
  // Ranks 1..3 start first and wait; rank 0 publishes later.
  std::vector<std::future<ncclUniqueId>> readers;
  for (int rank = 1; rank <= 3; ++rank)
    readers.push_back(std::async(std::launch::async, [&path, rank] {
      return nccl::unique_id_through_file(path, rank, std::chrono::seconds(20));
    }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const ncclUniqueId published = nccl::unique_id_through_file(path, 0);
  for (auto& r : readers) CHECK(same_bytes(r.get(), published));
  // What is on disk is the hex form plus a newline, and no temporary is left.
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  CHECK(line.size() == 2 * NCCL_UNIQUE_ID_BYTES);
  CHECK(same_bytes(nccl::unique_id_from_hex(line), published));
  CHECK_FALSE(fs::exists(dir.path / "nccl-id.tmp"));
}

TEST_CASE("unique id through a file: stale files, timeouts and garbage are errors") {
  scratch_dir dir;
  const fs::path path = dir.path / "nccl-id";
  SECTION("rank 0 refuses an existing file") {
    std::ofstream(path) << "left over\n";
    CHECK_THROWS_WITH(nccl::unique_id_through_file(path, 0),
                      Catch::Contains("already there") && Catch::Contains(path.string()));
  }
  SECTION("another rank gives up after its timeout instead of hanging") {
    const auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH(
        nccl::unique_id_through_file(path, 2, std::chrono::milliseconds(50)),
        Catch::Contains("rank 2 waited 50 ms") && Catch::Contains("did rank 0 start"));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
  }
  SECTION("a malformed file names the file") {
    std::ofstream(path) << "not an id\n";
    CHECK_THROWS_WITH(nccl::unique_id_through_file(path, 1, std::chrono::milliseconds(50)),
                      Catch::Contains("hex digits") && Catch::Contains(path.string()));
  }
  SECTION("a negative rank is refused") {
    CHECK_THROWS_WITH(nccl::unique_id_through_file(path, -1), Catch::Contains("rank must be >= 0"));
  }
}

TEST_CASE("unique id from an environment variable") {
  const char* variable = "DUALPIPE_TEST_NCCL_ID";
  ::unsetenv(variable);
  CHECK_THROWS_WITH(nccl::unique_id_from_environment(variable),
                    Catch::Contains("DUALPIPE_TEST_NCCL_ID is not set"));
  const ncclUniqueId id = nccl::new_unique_id();
  ::setenv(variable, nccl::unique_id_to_hex(id).c_str(), 1);
  CHECK(same_bytes(nccl::unique_id_from_environment(variable), id));
  ::setenv(variable, "12", 1);
  CHECK_THROWS_WITH(
      nccl::unique_id_from_environment(variable),
      Catch::Contains("got 2 characters") && Catch::Contains("DUALPIPE_TEST_NCCL_ID"));
  ::unsetenv(variable);
  CHECK(std::string(nccl::unique_id_variable) == "DUALPIPE_NCCL_UNIQUE_ID");
}

TEST_CASE("DUALPIPE_NCCL_CHECK throws cuda::error with library NCCL") {
  try {
    DUALPIPE_NCCL_CHECK(ncclGetUniqueId(nullptr));
    FAIL("ncclGetUniqueId(nullptr) did not fail");
  } catch (const dualpipe::cuda::error& e) {
    CHECK(e.library() == "NCCL");
    CHECK(e.code() == static_cast<int>(ncclInvalidArgument));
    CHECK(e.call() == "ncclGetUniqueId(nullptr)");
    CHECK(std::string(e.what()).find("NCCL call ncclGetUniqueId(nullptr) failed") !=
          std::string::npos);
  }
}

TEST_CASE("communicator: borrowing null and impossible ranks are refused before NCCL runs") {
  CHECK_THROWS_WITH(nccl::communicator::borrow(nullptr), Catch::Contains("null ncclComm_t"));
  const ncclUniqueId id = nccl::new_unique_id();
  CHECK_THROWS_WITH(nccl::communicator::create(4, id, 4),
                    Catch::Contains("rank 4 is outside a communicator of 4 ranks"));
  nccl::communicator empty;
  CHECK(empty.get() == nullptr);
  CHECK_FALSE(empty.owned());
}
