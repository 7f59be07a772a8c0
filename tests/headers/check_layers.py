#!/usr/bin/env python3
"""Checks that every public header includes only what the folder order allows.

Usage: check_layers.py ARCHITECTURE_MD INCLUDE_DIR [--expect-violation TEXT]

The order is read from the table in ARCHITECTURE_MD (docs/architecture.md),
whose rows look like
    | `analysis/` | `schedule/`, `analysis/` |
(a folder of include/dualpipe/, then the folders its headers may include), so
the documented order and the checked one cannot drift apart. A header right
under include/dualpipe/ (version.hpp) may include no other dualpipe header.
A folder missing from the table is an error: a new folder gets its place in
the docs first. Subfolders (runtime/detail/) belong to their top folder.

Exit status: 0 when every include follows the order, 1 with one line per
offending include otherwise, 2 for a table that cannot be read. With
--expect-violation TEXT it inverts: 0 only if a violation line contains TEXT
(the test that the check can fail).
"""
import os
import re
import sys

ROW = re.compile(r"^\|\s*`([a-z_]+)/`\s*\|(.*)\|\s*$")
FOLDER = re.compile(r"`([a-z_]+)/`")
INCLUDE = re.compile(r'^\s*#\s*include\s*"dualpipe/([^"]+)"', re.MULTILINE)


def read_order(doc):
    allowed = {}
    with open(doc, encoding="utf-8") as f:
        for line in f:
            m = ROW.match(line.strip())
            if m:
                allowed[m.group(1)] = set(FOLDER.findall(m.group(2))) | {m.group(1)}
    return allowed


def violations(allowed, include_dir):
    found = []
    root = os.path.join(include_dir, "dualpipe")
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith((".hpp", ".h")):
                continue
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            top = rel.split("/", 1)[0] if "/" in rel else None
            with open(full, encoding="utf-8", errors="replace") as f:
                includes = INCLUDE.findall(f.read())
            if top is not None and top not in allowed:
                found.append(f"{rel}: folder {top}/ has no row in the documented order")
                continue
            for inc in includes:
                target = inc.split("/", 1)[0] if "/" in inc else None
                if top is None:
                    found.append(f"{rel} includes dualpipe/{inc}: a top-level header includes "
                                 "no other dualpipe header")
                elif target is None or target not in allowed[top]:
                    where = "the top level" if target is None else target + "/"
                    found.append(f"{rel} includes dualpipe/{inc}: {top}/ may not include "
                                 f"{where} (it may include "
                                 + ", ".join(sorted(f + "/" for f in allowed[top])) + ")")
    return found


def main():
    args = sys.argv[1:]
    expect = None
    if "--expect-violation" in args:
        i = args.index("--expect-violation")
        expect = args[i + 1]
        del args[i:i + 2]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    allowed = read_order(args[0])
    if not allowed:
        print(f"{args[0]}: no folder order table found", file=sys.stderr)
        return 2
    found = violations(allowed, args[1])
    for line in found:
        print(line)
    if expect is not None:
        if any(expect in line for line in found):
            print(f"ok: the check reports '{expect}'")
            return 0
        print(f"FAIL: no violation mentions '{expect}'")
        return 1
    if not found:
        print(f"ok: every header follows the order of {args[0]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
