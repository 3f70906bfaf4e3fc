#!/usr/bin/env bash
# Memory per queued notification (issue #6: "a queued notification costs <= 2 KiB of RSS, measured with
# 1,000,000 queued"). Starts `herald serve` (in-process sandbox) on a fresh data dir with the FCM limit
# throttled to 1/s, so every accepted push waits in memory; drives it with `herald-loadtest --profile steady`;
# samples Herald's RSS (VmRSS), CPU time and FCM queue depth every few seconds until TARGET are queued; stops
# both and prints (RSS at N - RSS before the load) / N and the slope between two points.
#
# Usage: loadtest/queued-memory.sh [TARGET] [OUT_DIR]
#   TARGET   queued notifications to stop at (default 1000000; rate 4,000/s, so duration = TARGET/4000 + 10 s)
#   OUT_DIR  where samples.tsv and the logs go (default /tmp/queued-memory-<timestamp>)
# Environment: BIN (dir of the release `herald` and `herald-loadtest`, default $CARGO_TARGET_DIR/release, else
#   the workspace's target/release), PORT (8080), SANDBOX_PORT (8081), RATE (4000).
set -euo pipefail

TARGET=${1:-1000000}
OUT=${2:-/tmp/queued-memory-$(date -u +%Y%m%dT%H%M%S)}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$HERE/target}/release}
PORT=${PORT:-8080}
SANDBOX_PORT=${SANDBOX_PORT:-8081}
RATE=${RATE:-4000}
DURATION=$(( TARGET / RATE + 10 ))

mkdir -p "$OUT"
DATA="$OUT/data"
rm -rf "$DATA"

HERALD__ENGINE__QUEUE_CAPACITY=2000000 HERALD__ENGINE__SHARD_PENDING_MAX=100000 \
HERALD__PROVIDERS__LIMITS__FCM__RATE_PER_SECOND=1 HERALD__PROVIDERS__LIMITS__FCM__BURST=1 \
RUST_LOG=warn \
  "$BIN/herald" serve --config-dir "$HERE/config" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
  --sandbox-listen "127.0.0.1:$SANDBOX_PORT" >"$OUT/herald.log" 2>&1 &
HERALD=$!
LOADTEST=
cleanup() {
  [ -n "$LOADTEST" ] && kill "$LOADTEST" 2>/dev/null || true
  kill "$HERALD" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.2
done

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$HERALD/status"; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$HERALD/stat"; }
queued() {
  curl -sf "http://127.0.0.1:$PORT/metrics" \
    | awk '/^herald_queue_depth\{provider="fcm"/ {sum += $2} END {print sum + 0}'
}

START_RSS=$(rss_kib)
echo "herald pid $HERALD, RSS before the load: $START_RSS KiB; target $TARGET queued" | tee "$OUT/summary.txt"
"$BIN/herald-loadtest" --profile steady --herald "http://127.0.0.1:$PORT" --sandbox "http://127.0.0.1:$SANDBOX_PORT" \
  --rate "$RATE" --duration "$DURATION" --drain-s 0 --no-progress --out "$OUT/loadtest" >"$OUT/loadtest.log" 2>&1 &
LOADTEST=$!

T0=$(date +%s.%N)
printf 't_s\tqueued\trss_kib\tcpu_s\n' >"$OUT/samples.tsv"
while kill -0 "$LOADTEST" 2>/dev/null; do
  sleep 3
  Q=$(queued)
  printf '%.1f\t%s\t%s\t%s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$Q" "$(rss_kib)" "$(cpu_s)" >>"$OUT/samples.tsv"
  [ "$Q" -ge "$TARGET" ] && break
done
tail -n1 "$OUT/samples.tsv"

# (RSS at N - RSS before) / N at the last sample; slope between the first sample past 5% and the last one.
awk -F'\t' -v start="$START_RSS" -v target="$TARGET" 'NR > 1 {
    if (!a_q && $2 >= target * 0.05) { a_q = $2; a_r = $3 }
    q = $2; r = $3
  }
  END {
    printf "queued %d: RSS %.0f MiB -> %.0f MiB, %.0f bytes per queued notification\n",
      q, start / 1024, r / 1024, (r - start) * 1024 / q
    printf "slope %d -> %d queued: %.0f bytes per queued notification\n", a_q, q, (r - a_r) * 1024 / (q - a_q)
  }' "$OUT/samples.tsv" | tee -a "$OUT/summary.txt"
