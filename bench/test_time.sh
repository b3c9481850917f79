#!/usr/bin/env bash
# How long a fresh clone takes to build and run the tests (issue 21):
#
#   bench/test_time.sh REV [REV ...]
#
# For each revision: a clone of this repository in a scratch directory,
# checked out at REV, then `cargo test --locked --no-run` (the build, with a
# cold target/ and the machine's cargo registry) and
# `PV3_REQUIRE_MOSQUITTO=1 cargo test --locked --no-fail-fast` (the run).
# Prints one line a revision: build and run seconds, test binaries built,
# tests passed and failed, the load average after. Run them one after the
# other on a quiet machine; compare only figures of one session.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for rev in "$@"; do
  dir=$work/$rev
  git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$rev" || exit 1
  start=$(date +%s.%N)
  (cd "$dir" && cargo test --locked --no-run) >"$dir/build.log" 2>&1
  built=$(date +%s.%N)
  (cd "$dir" && PV3_REQUIRE_MOSQUITTO=1 cargo test --locked --no-fail-fast) >"$dir/run.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  binaries=$(grep -c 'Executable' "$dir/build.log")
  counts=$(grep -E '^test result' "$dir/run.log" | awk '{p += $4; f += $6} END {print p + 0, f + 0}')
  printf '%s build=%.0fs run=%.0fs binaries=%s passed=%s failed=%s rc=%s load=%s\n' \
    "$rev" "$(echo "$built - $start" | bc)" "$(echo "$end - $built" | bc)" "$binaries" \
    "${counts% *}" "${counts#* }" "$rc" "$(cut -d' ' -f1-3 /proc/loadavg)"
  rm -rf "$dir"
done
