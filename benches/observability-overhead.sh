#!/bin/sh
# P4 (10,000 heartbeating terminals) and P6 (a 10,000-terminal login storm)
# against an older voi-server and this one, alternating in one sitting, so
# the cost of a change (issue 30: metrics, audit, JSON-capable logging,
# named tokens) is read as a ratio on the same noisy machine.
#
#   git worktree add /tmp/base <commit> &&
#     (cd /tmp/base && cargo build --release --bin voi-server)
#   benches/observability-overhead.sh /tmp/base/target/release [rounds]
#
# Each round runs both servers, the older first in odd rounds; results go
# to /tmp/voi-overhead/<base|new>-<round>/benchmarks.json and a table is
# printed at the end.
set -eu
cd "$(dirname "$0")/.."
BASE=${1:?usage: $0 DIR-WITH-OLDER-voi-server [rounds]}
ROUNDS=${2:-3}
OUT=/tmp/voi-overhead
cargo build --release --locked --bins
cargo build --release --locked -p voi-bench
NEW=$(pwd)/target/release
rm -rf "$OUT"
for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) -eq 1 ]; then order="base new"; else order="new base"; fi
	for who in $order; do
		if [ "$who" = base ]; then bins=$BASE; else bins=$NEW; fi
		echo "== round $r: $who" >&2
		target/release/voi-bench --bins "$bins" --out "$OUT/$who-$r" storm --sessions 10000 --runs 1
		target/release/voi-bench --bins "$bins" --out "$OUT/$who-$r" scale --sessions 10000 --duration 60
	done
done
printf '| round | server | P6 first boot all online s | P6 power back all online s | P6 login p99 ms (first / back) | P6 server CPU s (first / back) | P4 heartbeat p50 ms | P4 p99 ms | P4 RSS per terminal kB |\n|---|---|---|---|---|---|---|---|---|\n'
for r in $(seq 1 "$ROUNDS"); do
	for who in base new; do
		f="$OUT/$who-$r/benchmarks.json"
		python3 - "$f" "$r" "$who" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
st = {s["wave"]: s for s in v.get("storm", [])}
sc = [s for s in v.get("scale", []) if s["sessions"] == 10000][-1]
fb, pb = st["first boot"], st["power back"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {fb['all_online_secs']:.2f} | {pb['all_online_secs']:.2f} | "
      f"{fb['login_p99_ms']:.0f} / {pb['login_p99_ms']:.0f} | {fb['server_cpu_secs']:.2f} / {pb['server_cpu_secs']:.2f} | "
      f"{sc['p50_ms']:.2f} | {sc['p99_ms']:.2f} | {sc['server_rss_per_terminal_kb']:.1f} |")
EOF
	done
done
