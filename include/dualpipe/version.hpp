// The library's version, as macros for `#if` and for printing. 0.1.0 is
// MAJOR 0, MINOR 1, PATCH 0, and DUALPIPE_VERSION is MAJOR * 10000 +
// MINOR * 100 + PATCH (100 here), so `#if DUALPIPE_VERSION >= 200` reads
// "0.2.0 or later". meson.build's project() states the same version; the
// build reads the three numbers below and refuses to configure if they
// differ, so keep each on its own `#define NAME number` line.
//
// Includes nothing, so it sits below every folder of include/dualpipe/.
#pragma once

#define DUALPIPE_VERSION_MAJOR 0
#define DUALPIPE_VERSION_MINOR 1
#define DUALPIPE_VERSION_PATCH 0

#define DUALPIPE_VERSION \
  (DUALPIPE_VERSION_MAJOR * 10000 + DUALPIPE_VERSION_MINOR * 100 + DUALPIPE_VERSION_PATCH)
