#!/bin/sh
# Runs every fuzz target until 10 million executions or 30 minutes, whichever
# comes first, and prints the count libFuzzer reports. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets it use the stable
# toolchain. New inputs go to $WORK (default /tmp/voi-fuzz), so the committed
# seeds in corpus/ stay small; crashes land in artifacts/<target>/.
#   usage: fuzz/run-all.sh [target ...]
set -eu
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
SECS=${SECS:-1800}
WORK=${WORK:-/tmp/voi-fuzz}
targets=${*:-"frame_decoder torrent_structs command_bodies server_requests torrent_meta"}
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -O
for t in $targets; do
    mkdir -p "$WORK/$t" "artifacts/$t"
    # JSON bodies get a dictionary of every message key.
    dict=""
    case $t in command_bodies|server_requests) dict="-dict=json.dict" ;; esac
    RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -O "$t" "$WORK/$t" "corpus/$t" -- \
        -runs="$RUNS" -max_total_time="$SECS" -artifact_prefix="artifacts/$t/" \
        -print_final_stats=1 -max_len=8192 $dict >"$WORK/$t.log" 2>&1 || {
        echo "$t: CRASH, see $WORK/$t.log and artifacts/$t/"
        continue
    }
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$t.log" | grep -o '[0-9]*$')
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$WORK/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*')
    echo "$t: $execs executions in ${secs:-?} s, no crash"
done
