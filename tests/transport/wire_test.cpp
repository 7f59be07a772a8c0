// The wire form of a tensor (wire.hpp): headers describe and check
// themselves, element types map to their codes, and std::vector travels with
// its length and refuses another element type.
#include <catch2/catch.hpp>

#include <complex>
#include <cstdint>
#include <vector>

#include "dualpipe/transport/wire.hpp"

using dualpipe::wire_dtype;
using dualpipe::wire_shape;

TEST_CASE("element types map to their wire codes") {
  STATIC_REQUIRE(dualpipe::wire_dtype_of<float>() == wire_dtype::f32);
  STATIC_REQUIRE(dualpipe::wire_dtype_of<double>() == wire_dtype::f64);
  STATIC_REQUIRE(dualpipe::wire_dtype_of<std::int64_t>() == wire_dtype::i64);
  STATIC_REQUIRE(dualpipe::wire_dtype_of<std::complex<float>>() == wire_dtype::c64);
  struct pair_of_shorts {
    short a, b;
  };
  STATIC_REQUIRE(dualpipe::wire_dtype_of<pair_of_shorts>() == wire_dtype::bytes);
}

TEST_CASE("a header says its shape and checks its byte count") {
  const std::int64_t dims[] = {8, 64};
  const wire_shape s = dualpipe::make_wire_shape<float>(dims);
  CHECK(s.bytes == 8 * 64 * 4);
  CHECK(s.dims_used == 2);
  CHECK(dualpipe::describe(s) == "f32[8, 64]");
  CHECK(dualpipe::wire_shape_error(s).empty());

  wire_shape lying = s;
  lying.bytes = 100;
  CHECK(dualpipe::wire_shape_error(lying) ==
        "f32[8, 64] holds 2048 bytes, but the header says 100");
  wire_shape negative = s;
  negative.dims[1] = -1;
  CHECK(dualpipe::wire_shape_error(negative) == "a negative dimension in f32[8, -1]");
  wire_shape too_many = s;
  too_many.dims_used = 9;
  CHECK(dualpipe::wire_shape_error(too_many) == "a shape of 9 dimensions (at most 8)");
  wire_shape no_size = s;
  no_size.element_size = 0;
  CHECK(dualpipe::wire_shape_error(no_size) == "an element size of 0 bytes");

  const std::int64_t nine[9] = {};
  CHECK_THROWS_WITH(dualpipe::make_wire_shape<float>(nine),
                    "dualpipe::make_wire_shape: 9 dimensions, at most 8");
  // A scalar: no dimensions, one element.
  CHECK(dualpipe::make_wire_shape<double>({}).bytes == 8);
}

TEST_CASE("std::vector travels with its length and refuses another element type") {
  using traits = dualpipe::wire_traits<std::vector<double>>;
  const std::vector<double> sent{1.5, -2.0, 3.25};
  const wire_shape s = traits::shape(sent);
  CHECK(dualpipe::describe(s) == "f64[3]");
  CHECK(traits::bytes(sent).size() == 24);

  std::vector<double> received(10, 0.0);
  const auto storage = traits::prepare(received, s);
  CHECK(received.size() == 3);
  CHECK(storage.size() == 24);
  CHECK(static_cast<const void*>(storage.data()) == static_cast<const void*>(received.data()));

  std::vector<float> wrong;
  CHECK_THROWS_WITH(dualpipe::wire_traits<std::vector<float>>::prepare(wrong, s),
                    "dualpipe::wire_traits<std::vector>: received f64[3], which a buffer of f32 "
                    "elements cannot hold");
  const std::int64_t dims[] = {2, 2};
  CHECK_THROWS_WITH(traits::prepare(received, dualpipe::make_wire_shape<double>(dims)),
                    "dualpipe::wire_traits<std::vector>: received f64[2, 2], a vector holds one "
                    "dimension");
}
