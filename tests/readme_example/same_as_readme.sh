#!/usr/bin/env bash
# Passes when the first ```cpp block of a Markdown file (README.md, or a page
# under docs/) is exactly the example file, so that the code the page shows is
# the code the test compiles.
# Usage: same_as_readme.sh README.md examples/readme_example.cpp
set -euo pipefail
readme=$1
example=$2
block=$(awk '/^```cpp$/ {inside = 1; next} inside && /^```$/ {exit} inside {print}' "$readme")
if [ -z "$block" ]; then
  echo "no \`\`\`cpp block in $readme" >&2
  exit 1
fi
if ! diff -u <(printf '%s\n' "$block") "$example"; then
  echo "the example in $readme differs from $example: keep them identical" >&2
  exit 1
fi
