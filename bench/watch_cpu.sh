#!/usr/bin/env bash
# CPU of `pv3 watch` at the P3's real cadence (issue 13). Loopback only.
#
#   bench/watch_cpu.sh                 # RUNS=3: about 10 minutes
#
# Starts a private mosquitto on a free 127.0.0.1 port and two `pv3 watch`
# views subscribed to it, each in a tmux session of its own (80x24 and
# 160x48: tmux is the terminal, its drawing is not counted), then publishes
# the sample capture at its recorded pace (`pv3 replay
# examples/p3-sample.jsonl --to-mqtt --speed 1`: 1056 messages in 180 s,
# ~5.9/s). For each view and run: CPU % of one core over the replay
# (utime + stime from /proc, as bench.sh's cadence figure for collect),
# RSS at the end, and frames drawn for messages taken (pv3 -v's closing
# line). Prints one line per view and run, then the medians.
# Knobs: RUNS PV3_BIN (measure another build) SAMPLE.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
SAMPLE=${SAMPLE:-examples/p3-sample.jsonl}
PV3=${PV3_BIN:-$ROOT/target/release/pv3}
CLK_TCK=$(getconf CLK_TCK)
SIZES=(80x24 160x48)

WORK=$(mktemp -d /tmp/pv3-watch-bench.XXXXXX)
chmod 711 "$WORK"   # mosquitto (its own user) writes its log inside
PIDS=()
SESSIONS=()
cleanup() {
    local s pid
    for s in "${SESSIONS[@]}"; do tmux kill-session -t "$s" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    if [[ -z ${KEEP_WORK:-} ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}
trap cleanup EXIT
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

cpu_s() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    echo "scale=4; (${f[11]} + ${f[12]}) / $CLK_TCK" | bc
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
median() {
    tr ' ' '\n' <<<"$*" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

command -v tmux >/dev/null || die "tmux is not installed"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[[ -x $MOSQUITTO ]] || die "mosquitto is not installed"
if [[ -z ${PV3_BIN:-} ]]; then
    log "building pv3 (release)"
    cargo build --release --quiet
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MQ_DIR=$WORK/mosquitto
mkdir -p "$MQ_DIR" && chmod 777 "$MQ_DIR"   # mosquitto drops root for its own user
cat >"$MQ_DIR/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
log_dest file $MQ_DIR/mosquitto.log
EOF
"$MOSQUITTO" -c "$MQ_DIR/mosquitto.conf" &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done

declare -A CPU RSS FRAMES
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$RUNS"); do
    declare -A PID=()
    for size in "${SIZES[@]}"; do
        session="pv3-watch-bench-$$-$size-$r"
        SESSIONS+=("$session")
        tmux new-session -d -s "$session" -x "${size%x*}" -y "${size#*x}" \
            "exec $PV3 -v watch --mqtt-host 127.0.0.1 --mqtt-port $PORT --mqtt-client-id bench-watch-$size-$r 2>$WORK/watch-$size-$r.log"
        PID[$size]=$(tmux display -p -t "$session" '#{pane_pid}')
        # Subscribed: the view shows the newest log line in its footer.
        for _ in $(seq 200); do
            tmux capture-pane -p -t "$session" | grep -q "subscribed to" && break
            sleep 0.1
        done
        tmux capture-pane -p -t "$session" | grep -q "subscribed to" || die "watch $size did not subscribe"
    done
    declare -A C0=()
    for size in "${SIZES[@]}"; do C0[$size]=$(cpu_s "${PID[$size]}"); done
    t0=$(date +%s%N)
    log "run $r: replaying $SAMPLE at its recorded pace into both views"
    "$PV3" replay "$SAMPLE" --to-mqtt --speed 1 --mqtt-host 127.0.0.1 --mqtt-port "$PORT" \
        --mqtt-client-id "bench-watch-replay-$r" 2>"$WORK/replay-$r.log" || die "replay failed"
    t1=$(date +%s%N)
    for size in "${SIZES[@]}"; do
        session="pv3-watch-bench-$$-$size-$r"
        pid=${PID[$size]}
        c1=$(cpu_s "$pid")
        cpu=$(echo "scale=4; ($c1 - ${C0[$size]}) * 100 * 1000000000 / ($t1 - $t0)" | bc)
        rss=$(rss_kb "$pid")
        tmux capture-pane -p -t "$session" >"$WORK/screen-$size-$r.txt"
        grep -q "PV001001DEV" "$WORK/screen-$size-$r.txt" || die "watch $size shows no device"
        tmux send-keys -t "$session" q
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        frames=$(grep -o '[0-9]* frames for [0-9]* messages in [0-9.]* s' "$WORK/watch-$size-$r.log" || echo "n/a")
        log "  $size: CPU $cpu % of one core, RSS $rss kB, $frames"
        CPU[$size]="${CPU[$size]:-} $cpu"
        RSS[$size]="${RSS[$size]:-} $rss"
        FRAMES[$size]="${FRAMES[$size]:-}; $frames"
    done
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pv3 watch at the real cadence ($SAMPLE at --speed 1), $RUNS runs, medians:"
for size in "${SIZES[@]}"; do
    echo "  $size: CPU $(median ${CPU[$size]}) % of one core (runs:${CPU[$size]}), RSS $(median ${RSS[$size]}) kB (runs:${RSS[$size]})"
    echo "         frames${FRAMES[$size]}"
done
