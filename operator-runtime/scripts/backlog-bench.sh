#!/bin/bash
# The windowed-sum job on a backlog: a fresh local 3-node cluster, RECORDS
# events generated before the job starts, then the job (2 tasks) timed
# from `run` until its tasks' committed offsets reach the events stream's
# end, and its result verified. Prints one JSON line.
#
# usage: backlog-bench.sh BIN_DIR RECORDS
#   BIN_DIR holds streamshield, streamshield-server and streamshield-runtime
#   (a release build: target/release).
set -euo pipefail
BIN=$(cd "$1" && pwd)
RECORDS=$2
DIR=$(mktemp -d /tmp/backlog-bench.XXXX)
RUN=
cleanup() {
    if [ -n "$RUN" ]; then kill -INT "$RUN" 2>/dev/null || true; wait "$RUN" 2>/dev/null || true; fi
    "$BIN/streamshield" local down --dir "$DIR/ss" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
export STREAMSHIELD_SERVER_BIN="$BIN/streamshield-server"
"$BIN/streamshield" local up --dir "$DIR/ss" >/dev/null
export STREAMSHIELD_ENDPOINTS
STREAMSHIELD_ENDPOINTS=$(cat "$DIR/ss/endpoints")
printf 'job = "windowed-sum"\n[parallelism]\nwindow = 2\n' >"$DIR/ws.toml"
"$BIN/streamshield-runtime" generate "$DIR/ws.toml" --records "$RECORDS" >/dev/null
END=$("$BIN/streamshield" --json streams describe windowed-sum.window events |
    python3 -c 'import json, sys; print(sum(p["end_offset"] for p in json.load(sys.stdin)["partition_info"]))')
START=$(date +%s.%N)
"$BIN/streamshield-runtime" run "$DIR/ws.toml" --status-file "$DIR/status.json" >"$DIR/run.log" 2>&1 &
RUN=$!
committed() {
    python3 -c '
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    print(sum(sum(t["offsets"].values()) for t in s["tasks"]))
except (OSError, ValueError, KeyError):
    print(0)' "$DIR/status.json"
}
until [ "$(committed)" -ge "$END" ]; do
    kill -0 "$RUN" 2>/dev/null || { echo "the job exited early:" >&2; tail "$DIR/run.log" >&2; exit 1; }
    sleep 0.5
done
STOP=$(date +%s.%N)
kill -INT "$RUN"
wait "$RUN" || true
RUN=
VERIFY=$("$BIN/streamshield-runtime" verify "$DIR/ws.toml" --records "$RECORDS" | tail -1)
python3 -c '
import json, sys
end, start, stop = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(json.dumps({"events": end, "seconds": round(stop - start, 1),
                  "records_per_s": round(end / (stop - start)), "verify": json.loads(sys.argv[4])}))' \
    "$END" "$START" "$STOP" "$VERIFY"
