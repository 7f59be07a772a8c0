#!/usr/bin/env python3
"""An installed dualpipe-cpp, used as docs/install.md says.

Usage: install_test.py SOURCE_ROOT VERSION MESON NINJA

In a temporary directory:
  1. configures SOURCE_ROOT with --prefix=<tmp>/prefix and tests, examples,
     benches and the tool off, and runs `meson install`;
  2. checks what landed: every header of include/dualpipe/, dualpipe.pc (in
     <libdir>/pkgconfig, lib/x86_64-linux-gnu on Debian) and, beside it,
     <libdir>/cmake/dualpipe/dualpipeConfig.cmake and its version file;
  3. builds consumer.cpp with `c++ -std=c++20 $(pkg-config --cflags dualpipe)`
     and runs it: it must print VERSION, C++20 and `validate ok`;
  4. moves the prefix elsewhere (the CMake package must be relocatable; the
     .pc file is not, which is why step 3 comes first) and builds
     cmake-consumer/ (find_package(dualpipe REQUIRED), dualpipe::dualpipe)
     with CMAKE_PREFIX_PATH at the moved prefix, and runs it;
  5. checks the version file: find_package(dualpipe MAJOR.MINOR) is met (this
     build also asks for C++23, which the package must not lower), a request
     for the next major or for the previous 0.x series is not.
A failing step prints its command and output. The temporary directory is
removed however the test ends.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STEP_TIMEOUT_S = 150
HERE = Path(__file__).resolve().parent
# What to install when a tool is missing (scripts/setup.sh lists them).
DEBIAN_PACKAGES = {"cmake": "cmake", "pkg-config": "pkg-config (pkgconf)", "c++": "g++"}


def check(condition, message):
    if not condition:
        sys.exit("FAIL: " + message)


def command_line(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)


def attempt(cmd, env=None):
    """Runs cmd and returns (exit status, stdout + stderr)."""
    print("$", command_line(cmd), flush=True)
    try:
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                                timeout=STEP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAIL: {command_line(cmd)} ran past {STEP_TIMEOUT_S} s")
    return result.returncode, result.stdout + result.stderr


def run(cmd, env=None):
    """Runs cmd; on failure prints it and its output and exits 1."""
    status, output = attempt(cmd, env)
    check(status == 0, f"{command_line(cmd)} exited {status}:\n{output}")
    return output


def tool(name):
    path = shutil.which(name)
    check(path, f"`{name}` is not on PATH: install the Debian package "
                f"{DEBIAN_PACKAGES.get(name, name)} (scripts/setup.sh lists it)")
    return path


def check_consumer_output(output, version, who, cplusplus_above=None):
    """The lines consumer.cpp prints: VERSION from the macros, the standard it
    was compiled as (exactly C++20 unless cplusplus_above), a table, `ok`."""
    major, minor, patch = (int(v) for v in version.split("."))
    expected = f"version {version} ({major * 10000 + minor * 100 + patch})"
    check(expected in output.splitlines(), f"{who}: expected '{expected}', got:\n{output}")
    cplusplus = re.search(r"^__cplusplus (\d+)$", output, re.MULTILINE)
    check(cplusplus, f"{who}: no __cplusplus line:\n{output}")
    value = int(cplusplus.group(1))
    if cplusplus_above is None:
        check(value == 202002, f"{who}: expected C++20 (__cplusplus 202002), got:\n{output}")
    else:
        check(value > cplusplus_above,
              f"{who}: expected __cplusplus above {cplusplus_above}, got:\n{output}")
    table = re.search(r"^dualpipe ranks 4 instructions (\d+)$", output, re.MULTILINE)
    check(table and int(table.group(1)) > 0, f"{who}: no 4-rank DualPipe table:\n{output}")
    check("validate ok" in output.splitlines(), f"{who}: the table does not validate:\n{output}")


def install(meson, source_root, tmp, env):
    """Steps 1 and 2: installs into <tmp>/prefix; returns (prefix, libdir path)."""
    prefix = tmp / "prefix"
    build = tmp / "build"
    run([meson, "setup", build, source_root, f"--prefix={prefix}",
         "-Dtests=false", "-Dexamples=false", "-Dbench=false", "-Dtool=false"], env)
    run([meson, "install", "-C", build], env)

    pcs = sorted(prefix.rglob("dualpipe.pc"))
    check(len(pcs) == 1 and pcs[0].parent.name == "pkgconfig",
          f"expected one <libdir>/pkgconfig/dualpipe.pc under {prefix}, found {pcs}")
    libdir = pcs[0].parent.parent
    package_dir = libdir / "cmake" / "dualpipe"
    for name in ("dualpipeConfig.cmake", "dualpipeConfigVersion.cmake"):
        check((package_dir / name).is_file(),
              f"{package_dir / name} is missing; {package_dir} holds "
              f"{sorted(p.name for p in package_dir.iterdir()) if package_dir.is_dir() else 'nothing'}")
    source_headers = {p.relative_to(source_root / "include")
                      for p in (source_root / "include" / "dualpipe").rglob("*") if p.is_file()}
    installed = {p.relative_to(prefix / "include")
                 for p in (prefix / "include" / "dualpipe").rglob("*") if p.is_file()}
    missing = sorted(str(p) for p in source_headers - installed)
    check(not missing, f"headers not installed under {prefix / 'include'}: {missing}")
    config = (package_dir / "dualpipeConfig.cmake").read_text()
    check(str(prefix) not in config,
          f"dualpipeConfig.cmake names the prefix {prefix}: it would not survive a move")
    return prefix, libdir


def pkgconfig_consumer(prefix, libdir, tmp, version, cxx, env):
    """Step 3: the pkg-config consumer."""
    env = dict(env, PKG_CONFIG_PATH=str(libdir / "pkgconfig"))
    pkg_config = tool("pkg-config")
    modversion = run([pkg_config, "--modversion", "dualpipe"], env).strip()
    check(modversion == version, f"pkg-config --modversion dualpipe says {modversion}, not {version}")
    cflags = shlex.split(run([pkg_config, "--cflags", "dualpipe"], env))
    check(f"-I{prefix / 'include'}" in cflags,
          f"pkg-config --cflags dualpipe does not give -I{prefix / 'include'}: {cflags}")
    check(not any(flag.startswith("-std") for flag in cflags),
          f"pkg-config --cflags dualpipe names a language standard: {cflags}")
    program = tmp / "pkgconfig-consumer"
    run(shlex.split(cxx) + ["-std=c++20"] + cflags + [HERE / "consumer.cpp", "-o", program], env)
    check_consumer_output(run([program], env), version, "the pkg-config consumer")


def cmake_configure(cmake, ninja, build, prefix, extra=()):
    """The configure command of cmake-consumer/ (CMake takes the compiler
    from $CXX, as step 3 does, or c++)."""
    return [cmake, "-S", HERE / "cmake-consumer", "-B", build, "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}", f"-DCMAKE_PREFIX_PATH={prefix}", *extra]


def cmake_consumers(prefix, tmp, version, ninja, env):
    """Steps 4 and 5: the CMake consumer, from a moved prefix."""
    cmake = tool("cmake")
    moved = tmp / "moved" / "elsewhere"
    moved.parent.mkdir()
    prefix.rename(moved)

    build = tmp / "cmake-build"
    configured = run(cmake_configure(cmake, ninja, build, moved), env)
    for expected in (f"dualpipe_VERSION: {version}",
                     f"dualpipe include directories: {moved / 'include'}",
                     "dualpipe compile features: cxx_std_20"):
        check(re.search(r"^-- " + re.escape(expected) + "$", configured, re.MULTILINE),
              f"the CMake consumer's configure does not say '{expected}':\n{configured}")
    run([cmake, "--build", build], env)
    check_consumer_output(run([build / "cmake-consumer"], env), version, "the CMake consumer")

    # Met: this series. Built as C++23, which cxx_std_20 must not lower.
    major, minor, _ = (int(v) for v in version.split("."))
    series = f"{major}.{minor}"
    build23 = tmp / "cmake-build-cxx23"
    run(cmake_configure(cmake, ninja, build23, moved,
                        [f"-DDUALPIPE_REQUEST={series}", "-DCMAKE_CXX_STANDARD=23"]), env)
    run([cmake, "--build", build23], env)
    check_consumer_output(run([build23 / "cmake-consumer"], env), version,
                          f"the CMake consumer asking for {series}, as C++23", cplusplus_above=202002)

    # Not met: the next major, and the previous series (0.x: a minor release
    # may break the API).
    refused = [f"{major + 1}.0"]
    if major == 0 and minor > 0:
        refused.append(f"0.{minor - 1}")
    elif major > 0:
        refused.append(f"{major - 1}.0")
    for request in refused:
        cmd = cmake_configure(cmake, ninja, tmp / f"cmake-build-{request}", moved,
                              [f"-DDUALPIPE_REQUEST={request}"])
        status, output = attempt(cmd, env)
        check(status != 0,
              f"find_package(dualpipe {request}) was met by {version}:\n{command_line(cmd)}\n{output}")
        check(f'compatible with requested version "{request}"' in output and version in output,
              f"find_package(dualpipe {request}) failed, but not for the version:\n"
              f"{command_line(cmd)}\n{output}")
    return series, refused


def main():
    source_root, version, meson, ninja = sys.argv[1:5]
    source_root = Path(source_root).resolve()
    cxx = os.environ.get("CXX") or tool("c++")
    tool("cmake")
    tool("pkg-config")
    # A DESTDIR from the caller would send the install elsewhere.
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    with tempfile.TemporaryDirectory(prefix="dualpipe-install-") as tmp_name:
        tmp = Path(tmp_name)
        prefix, libdir = install(meson, source_root, tmp, env)
        pkgconfig_consumer(prefix, libdir, tmp, version, cxx, env)
        libdir_name = libdir.relative_to(prefix)
        series, refused = cmake_consumers(prefix, tmp, version, ninja, env)

    print(f"dualpipe-cpp {version} installed (<libdir> = {libdir_name}): the pkg-config consumer "
          f"and the CMake consumer from a moved prefix build and validate a table; "
          f"find_package(dualpipe {series}) is met (as C++23 too), "
          f"{' and '.join(refused)} are not")


if __name__ == "__main__":
    main()
