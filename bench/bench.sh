#!/usr/bin/env bash
# End-to-end benchmarks for pv3 (issue 6; soak of issue 4). Loopback only.
#
#   bench/bench.sh                 # everything, ~8 minutes (docs/performance.md)
#   ONLY=fast,replay bench/bench.sh
#
# Starts a private mosquitto on a free 127.0.0.1 port and the counting sink
# (bench/sink), then measures (each figure the median of RUNS runs):
#   fast     collect, N_FAST messages published as fast as possible: delivered
#            measurements/s with zero loss, CPU s per 1000 messages, peak RSS;
#            the Python baseline (bench/baseline_collector.py) likewise with
#            N_PY messages
#   cadence  collect and the Python baseline side by side at the P3's real
#            cadence (replay --to-mqtt --speed 1 of examples/p3-sample.jsonl):
#            CPU % of one core (median of 60 s windows) and RSS
#   replay   replay of a REPLAY_LINES-line capture into the sink, and
#            --dry-run --format jsonl > /dev/null; peak RSS for it and for a
#            100,000-line capture
#   sniff    pv3 sniff vs mosquitto_sub -F %j on the same N_SNIFF messages
#   soak     N_SOAK messages (an hour-long outage) spooled while the sink
#            answers 503, then drained: drain rate, spool size, peak RSS
#   backfill replay of the REPLAY_LINES-line capture into a fresh sink that
#            remembers what it is sent and answers GET .../history (sink
#            --history; pass 1), then the same capture again into the same
#            sink (pass 2; issue 11), and, to see what the history check
#            costs, with --no-skip-existing into a sink of its own (pass 0):
#            for each pass wall time, measurements/s, CPU s, peak RSS,
#            delivered / skipped, history queries and their time (from
#            replay's summary line). Zero loss: passes 0 and 1 deliver every
#            decoded measurement, pass 2 none (all skipped), and the sink
#            holds each once. About 45 s with RUNS=3 (alone: ONLY=backfill)
#   outputs  collect with the API only and collect with every output on
#            (--publish --ha --metrics-listen, scraped every 15 s) side by
#            side at the real cadence, as in cadence: CPU % and RSS of each
#            (issue 12). About 3.5 minutes per run (OUTPUTS_RUNS, default 1)
#   size     release binary size
# Knobs (environment): ONLY RUNS N_FAST N_PY N_SNIFF N_SOAK SOAK_SPEED
# SOAK_LINGER SOAK_RUNS REPLAY_LINES CADENCE_FILE CADENCE_WINDOW CADENCE_RUNS OUTPUTS_RUNS PV3_BIN
# KEEP_WORK RESULTS_FILE.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ONLY=${ONLY:-all}
RUNS=${RUNS:-3}
N_FAST=${N_FAST:-200000}
N_PY=${N_PY:-10000}
N_SNIFF=${N_SNIFF:-200000}
N_SOAK=${N_SOAK:-36000}
SOAK_SPEED=${SOAK_SPEED:-100}
SOAK_RUNS=${SOAK_RUNS:-$RUNS}
REPLAY_LINES=${REPLAY_LINES:-1000000}
SAMPLE=examples/p3-sample.jsonl
CADENCE_FILE=${CADENCE_FILE:-$SAMPLE}
CADENCE_WINDOW=${CADENCE_WINDOW:-60}
PV3=${PV3_BIN:-$ROOT/target/release/pv3}   # PV3_BIN: measure another build
SINK=$ROOT/bench/sink/target/release/pv3-bench-sink
PY=${PYTHON:-python3}
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/pv3-bench.XXXXXX)
chmod 711 "$WORK"   # mosquitto (its own user) writes its log inside
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -z ${KEEP_WORK:-} ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}
trap cleanup EXIT

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
want() { [[ $ONLY == all || ,$ONLY, == *,$1,* ]]; }
now_ns() { date +%s%N; }

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Stops one process we started (TERM, then wait).
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# CPU seconds (user+system) of a live process.
cpu_s() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }            # fields after "(comm) "
    read -r -a f <<<"$stat"      # f[0] is field 3 (state)
    echo "scale=4; (${f[11]} + ${f[12]}) / $CLK_TCK" | bc
}
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Resident pages of the binary and libraries (shared, reclaimable) / of the heap and stacks.
rss_file_kb() { awk '/^RssFile/ {print $2}' "/proc/$1/status"; }
rss_anon_kb() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }

median() {
    tr ' ' '\n' <<<"$*" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
calc() { echo "scale=6; $*" | bc; }
fmt() { [[ $1 == n/a ]] && echo n/a || printf "%.${2:-0}f" "$1"; }

declare -A V   # metric -> "run1 run2 ..."
add() { V[$1]="${V[$1]:-} $2"; }
# While RPID (a replay) runs, the CPU % of one core and the RSS of two
# processes in CADENCE_WINDOW-second windows (a last window shorter than
# half of one is left out): adds PREFIX_cpu and PREFIX_rss for each.
#   sample_windows RPID PREFIX_A PID_A PREFIX_B PID_B
sample_windows() {
    local rpid=$1 ka=$2 pa=$3 kb=$4 pb=$5 t t0 a a0 b b0 dt
    t0=$(now_ns); a0=$(cpu_s "$pa"); b0=$(cpu_s "$pb")
    while kill -0 "$rpid" 2>/dev/null; do
        for _ in $(seq $((CADENCE_WINDOW * 10))); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
        t=$(now_ns); a=$(cpu_s "$pa"); b=$(cpu_s "$pb")
        dt=$(calc "($t - $t0) / 1000000000")
        if (($(echo "$dt > $CADENCE_WINDOW / 2" | bc))); then
            add "${ka}_cpu" "$(calc "($a - $a0) * 100 / $dt")"
            add "${kb}_cpu" "$(calc "($b - $b0) * 100 / $dt")"
            add "${ka}_rss" "$(rss_kb "$pa")"
            add "${kb}_rss" "$(rss_kb "$pb")"
        fi
        t0=$t; a0=$a; b0=$b
    done
}
NOTES=()       # odd things seen, printed under the table
note() { log "  note: $*"; NOTES+=("$*"); }

# ---------------------------------------------------------------- set-up
log "work dir $WORK"
log "building pv3 (release) and the sink"
cargo build --release --quiet
cargo build --release --quiet --manifest-path bench/sink/Cargo.toml
command -v mosquitto >/dev/null || die "mosquitto is not installed"
"$PY" -c 'import paho.mqtt, requests' 2>/dev/null || die "pip install paho-mqtt requests"

MQ_DIR=$WORK/mosquitto
mkdir -p "$MQ_DIR" && chmod 777 "$MQ_DIR"   # mosquitto drops root for its own user
MQ_PORT=$(free_port)
cat >"$MQ_DIR/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
# QoS 0 messages to a slow subscriber are dropped past max_queued_messages
# (default 1000): a benchmark must measure the subscriber, not that limit.
max_queued_messages 100000000
max_queued_bytes 0
log_dest file $MQ_DIR/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
EOF
mosquitto -c "$MQ_DIR/mosquitto.conf" 2>"$MQ_DIR/stderr" &
MQ_PID=$!
PIDS+=("$MQ_PID")
for _ in $(seq 50); do
    grep -q "running" "$MQ_DIR/mosquitto.log" 2>/dev/null && break
    sleep 0.1
done
kill -0 "$MQ_PID" 2>/dev/null && grep -q "port $MQ_PORT" "$MQ_DIR/mosquitto.log" ||
    die "mosquitto did not start on 127.0.0.1:$MQ_PORT: $(cat "$MQ_DIR/stderr" "$MQ_DIR/mosquitto.log" 2>/dev/null)"
log "mosquitto on 127.0.0.1:$MQ_PORT (pid $MQ_PID)"

# Starts a sink (name, extra sink options...); sets SINK_PID and SINK_PORT.
start_sink() {
    local name=$1
    shift
    rm -f "$WORK/$name.port"
    "$SINK" --port-file "$WORK/$name.port" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    for _ in $(seq 50); do [[ -s $WORK/$name.port ]] && break; sleep 0.1; done
    SINK_PORT=$(<"$WORK/$name.port")
}
start_sink sink
SINK_A=$SINK_PORT
sink() { curl -sf "http://127.0.0.1:${2:-$SINK_A}/count" | jq -r ".$1"; }
sink_reset() { curl -sf -X POST "http://127.0.0.1:${1:-$SINK_A}/reset" >/dev/null; }
sink_fail() { curl -sf -X POST "http://127.0.0.1:${2:-$SINK_A}/fail?on=$1" >/dev/null; }
log "sink on 127.0.0.1:$SINK_A"

# Waits until the broker logged a SUBSCRIBE from client id $1.
wait_subscribed() {
    local cid=$1 pid=$2
    for _ in $(seq 100); do
        grep -qE "^[0-9]+: $cid [0-9] " "$MQ_DIR/mosquitto.log" && return 0
        kill -0 "$pid" 2>/dev/null || die "$cid exited before subscribing"
        sleep 0.1
    done
    die "$cid did not subscribe"
}

# Waits until sink $1 counts >= $2 measurements and >= $3 alarms; stalls of
# $4 s (default 20) without progress fail the run.
wait_sink() {
    local port=$1 want_m=$2 want_a=$3 stall=${4:-20} m a last=-1 since
    since=$(date +%s)
    while :; do
        read -r m a < <(curl -sf "http://127.0.0.1:$port/count" | jq -r '"\(.measurements) \(.alarms)"')
        if ((m >= want_m && a >= want_a)); then return 0; fi
        if ((m != last)); then last=$m; since=$(date +%s); fi
        if (($(date +%s) - since > stall)); then
            log "stalled at $m/$want_m measurements, $a/$want_a alarms"
            return 1
        fi
        sleep 0.05
    done
}

blast() { "$PY" bench/mqtt_blast.py --port "$MQ_PORT" --count "$2" "$1"; }

# ---------------------------------------------------------------- captures
log "making synthetic captures (repeating $SAMPLE, time-shifted)"
"$PY" bench/make_capture.py --lines "$REPLAY_LINES" "$WORK/big.jsonl" 2>/dev/null
for n in "$N_FAST" "$N_PY" "$N_SNIFF" "$N_SOAK" 100000; do
    [[ -f $WORK/cap$n.jsonl ]] || head -n "$n" "$WORK/big.jsonl" >"$WORK/cap$n.jsonl"
done
# Expected counts: what pv3 itself says the capture decodes to.
expect() { # file -> "measurements alarms"
    "$PV3" replay "$1" --dry-run --format jsonl 2>/dev/null |
        awk '/"metric_name"/ {m++} /"alarms"/ {a++} END {print m+0, a+0}'
}

STARTED=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- fast
if want fast; then
    read -r EXP_M EXP_A < <(expect "$WORK/cap$N_FAST.jsonl")
    log "collect fast: $N_FAST messages -> $EXP_M measurements + $EXP_A alarm updates expected"
    # The broker and publisher alone: how fast can messages go in at all?
    for r in $(seq "$RUNS"); do
        mosquitto_sub -h 127.0.0.1 -p "$MQ_PORT" -i "bench-msub-ceiling-$r" -t 'pv/PV3/PV001001DEV/#' \
            -C "$N_FAST" >/dev/null &
        pid=$!; PIDS+=("$pid")
        wait_subscribed "bench-msub-ceiling-$r" "$pid"
        out=$(blast "$WORK/cap$N_FAST.jsonl" "$N_FAST")
        wait "$pid"; t1=$(now_ns)
        t0=$(jq -r .start_ns <<<"$out"); tp=$(jq -r .end_ns <<<"$out")
        add pub_rate "$(calc "$N_FAST / (($tp - $t0) / 1000000000)")"
        add msub_ceiling "$(calc "$N_FAST / (($t1 - $t0) / 1000000000)")"
    done
    for r in $(seq "$RUNS"); do
        sink_reset
        state=$WORK/state-fast-$r
        "$PV3" collect --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-collect-$r" \
            --api-url "http://127.0.0.1:$SINK_A" --state-dir "$state" --stats-interval 0 \
            2>"$WORK/collect-fast-$r.log" &
        pid=$!; PIDS+=("$pid")
        wait_subscribed "bench-collect-$r" "$pid"
        c0=$(cpu_s "$pid")
        out=$(blast "$WORK/cap$N_FAST.jsonl" "$N_FAST")
        t0=$(jq -r .start_ns <<<"$out")
        wait_sink "$SINK_A" "$EXP_M" "$EXP_A" || die "collect run $r lost data (log: $WORK/collect-fast-$r.log)"
        c1=$(cpu_s "$pid"); hwm=$(hwm_kb "$pid")
        sleep 0.5
        got=$(sink measurements); gota=$(sink alarms); last=$(sink last_ns)
        [[ $got == "$EXP_M" && $gota == "$EXP_A" ]] || die "collect run $r: sink has $got/$gota, expected $EXP_M/$EXP_A"
        stop "$pid"
        add collect_mps "$(calc "$EXP_M / (($last - $t0) / 1000000000)")"
        add collect_msgps "$(calc "$N_FAST / (($last - $t0) / 1000000000)")"
        add collect_cpu1k "$(calc "($c1 - $c0) * 1000 / $N_FAST")"
        add collect_hwm "$hwm"
        add collect_posts "$(sink requests)"
        log "  pv3 run $r: $(fmt "$(calc "$EXP_M / (($last - $t0) / 1000000000)")") measurements/s, $(calc "($c1 - $c0)") CPU s, VmHWM $hwm kB"
    done

    read -r -a PY_EXP < <("$PY" bench/baseline_collector.py --count-only "$WORK/cap$N_PY.jsonl" | jq -r '"\(.measurements) \(.alarms) \(.posts)"')
    log "python baseline fast: $N_PY messages -> ${PY_EXP[0]} measurements, ${PY_EXP[1]} alarm updates expected"
    for r in $(seq "$RUNS"); do
        sink_reset
        "$PY" bench/baseline_collector.py --mqtt-port "$MQ_PORT" --client-id "bench-py-$r" \
            --api-url "http://127.0.0.1:$SINK_A" --stats-file "$WORK/py-fast-$r.json" \
            2>"$WORK/py-fast-$r.log" &
        pid=$!; PIDS+=("$pid")
        wait_subscribed "bench-py-$r" "$pid"
        c0=$(cpu_s "$pid")
        out=$(blast "$WORK/cap$N_PY.jsonl" "$N_PY")
        t0=$(jq -r .start_ns <<<"$out")
        wait_sink "$SINK_A" "${PY_EXP[0]}" "${PY_EXP[1]}" || die "python baseline run $r lost data"
        c1=$(cpu_s "$pid"); hwm=$(hwm_kb "$pid")
        sleep 0.5
        got=$(sink measurements); last=$(sink last_ns)
        [[ $got == "${PY_EXP[0]}" ]] || die "python run $r: sink has $got, expected ${PY_EXP[0]}"
        stop "$pid"
        sent=$(jq -r .measurements "$WORK/py-fast-$r.json")
        [[ $sent == "$got" ]] || log "  python says it sent $sent, the sink counted $got"
        add py_mps "$(calc "$got / (($last - $t0) / 1000000000)")"
        add py_msgps "$(calc "$N_PY / (($last - $t0) / 1000000000)")"
        add py_cpu1k "$(calc "($c1 - $c0) * 1000 / $N_PY")"
        add py_hwm "$hwm"
        log "  python run $r: $(fmt "$(calc "$got / (($last - $t0) / 1000000000)")") measurements/s"
    done
fi

# ---------------------------------------------------------------- outputs
if want outputs; then
    read -r SAMPLE_M SAMPLE_A < <(expect "$CADENCE_FILE")
    start_sink sink-outputs
    SINK_O=$SINK_PORT
    for r in $(seq "${OUTPUTS_RUNS:-1}"); do
        sink_reset "$SINK_A"; sink_reset "$SINK_O"
        log "outputs run $r: collect (API only) and collect (every output) side by side, $CADENCE_FILE at --speed 1"
        "$PV3" collect --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-collect-api-$r" \
            --api-url "http://127.0.0.1:$SINK_A" --state-dir "$WORK/state-api-$r" --stats-interval 0 \
            2>"$WORK/collect-api-$r.log" &
        apid=$!; PIDS+=("$apid")
        METRICS_PORT=$(free_port)
        "$PV3" collect --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-collect-all-$r" \
            --api-url "http://127.0.0.1:$SINK_O" --state-dir "$WORK/state-all-$r" --stats-interval 0 \
            --ha --metrics-listen "127.0.0.1:$METRICS_PORT" 2>"$WORK/collect-all-$r.log" &
        opid=$!; PIDS+=("$opid")
        wait_subscribed "bench-collect-api-$r" "$apid"
        wait_subscribed "bench-collect-all-$r" "$opid"
        # What Prometheus would do: a scrape every 15 s.
        ( while kill -0 "$opid" 2>/dev/null; do
              curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics-$r.txt" 2>/dev/null || true
              sleep 15
          done ) &
        scrape_pid=$!; PIDS+=("$scrape_pid")
        "$PV3" replay "$CADENCE_FILE" --to-mqtt --speed 1 --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" \
            --mqtt-client-id "bench-replay-out-$r" 2>"$WORK/replay-out-$r.log" &
        rpid=$!; PIDS+=("$rpid")
        sample_windows "$rpid" out_api "$apid" out_all "$opid"
        wait "$rpid" || die "replay --to-mqtt failed: $(tail -3 "$WORK/replay-out-$r.log")"
        wait_sink "$SINK_A" "$SAMPLE_M" "$SAMPLE_A" 10 || die "outputs: collect (API only) lost data"
        wait_sink "$SINK_O" "$SAMPLE_M" "$SAMPLE_A" 10 || die "outputs: collect (every output) lost data"
        grep -q '^pv3_soc_percent' "$WORK/metrics-$r.txt" || die "outputs: /metrics has no SOC"
        add out_api_hwm "$(hwm_kb "$apid")"
        add out_all_hwm "$(hwm_kb "$opid")"
        stop "$apid"; stop "$opid"; kill "$scrape_pid" 2>/dev/null || true
        log "  CPU % per window, API only:${V[out_api_cpu]}; every output:${V[out_all_cpu]}"
    done
fi

# ---------------------------------------------------------------- cadence
if want cadence; then
    read -r SAMPLE_M SAMPLE_A < <(expect "$CADENCE_FILE")
    # The capture's own message rate (messages / recorded duration).
    CAD_RATE=$(jq -rs '(length) / (((.[-1].ts | sub("\\.[0-9]+Z$"; "Z") | fromdate) - (.[0].ts | sub("\\.[0-9]+Z$"; "Z") | fromdate)) | if . < 1 then 1 else . end)' "$CADENCE_FILE")
    start_sink sink-py
    SINK_B=$SINK_PORT
    for r in $(seq "${CADENCE_RUNS:-1}"); do
        sink_reset "$SINK_A"; sink_reset "$SINK_B"
        log "cadence run $r: pv3 collect and the Python baseline side by side, $CADENCE_FILE at --speed 1"
        "$PV3" collect --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-collect-cad-$r" \
            --api-url "http://127.0.0.1:$SINK_A" --state-dir "$WORK/state-cad-$r" --stats-interval 0 \
            2>"$WORK/collect-cad-$r.log" &
        cpid=$!; PIDS+=("$cpid")
        "$PY" bench/baseline_collector.py --mqtt-port "$MQ_PORT" --client-id "bench-py-cad-$r" \
            --api-url "http://127.0.0.1:$SINK_B" --stats-file "$WORK/py-cad-$r.json" 2>"$WORK/py-cad-$r.log" &
        ppid=$!; PIDS+=("$ppid")
        wait_subscribed "bench-collect-cad-$r" "$cpid"
        wait_subscribed "bench-py-cad-$r" "$ppid"
        "$PV3" replay "$CADENCE_FILE" --to-mqtt --speed 1 --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" \
            --mqtt-client-id "bench-replay-cad-$r" 2>"$WORK/replay-cad-$r.log" &
        rpid=$!; PIDS+=("$rpid")
        sample_windows "$rpid" cad_pv3 "$cpid" cad_py "$ppid"
        wait "$rpid" || die "replay --to-mqtt failed: $(tail -3 "$WORK/replay-cad-$r.log")"
        wait_sink "$SINK_A" "$SAMPLE_M" "$SAMPLE_A" 10 || die "cadence: pv3 lost data"
        read -r -a PYS < <("$PY" bench/baseline_collector.py --count-only "$CADENCE_FILE" | jq -r '"\(.measurements) \(.alarms)"')
        wait_sink "$SINK_B" "${PYS[0]}" "${PYS[1]}" 10 || die "cadence: python baseline lost data"
        add cad_pv3_hwm "$(hwm_kb "$cpid")"
        add cad_pv3_rss_file "$(rss_file_kb "$cpid")"
        add cad_pv3_rss_anon "$(rss_anon_kb "$cpid")"
        add cad_py_hwm "$(hwm_kb "$ppid")"
        add cad_pv3_posts "$(sink requests "$SINK_A")"
        add cad_py_posts "$(sink requests "$SINK_B")"
        add cad_pv3_total_cpu "$(cpu_s "$cpid")"
        stop "$cpid"; stop "$ppid"
        log "  pv3 CPU % per window:${V[cad_pv3_cpu]}; python:${V[cad_py_cpu]}"
    done
fi

# ---------------------------------------------------------------- replay
timed() { # output file, command... ; writes "wall user sys maxrss_kb"
    local out=$1; shift
    /usr/bin/time -f "%e %U %S %M" -o "$out" "$@"
}
if want replay; then
    read -r BIG_M BIG_A < <(expect "$WORK/big.jsonl")
    read -r K100_M _ < <(expect "$WORK/cap100000.jsonl")
    log "replay: $REPLAY_LINES lines -> $BIG_M measurements expected"
    for r in $(seq "$RUNS"); do
        sink_reset
        timed "$WORK/t" "$PV3" replay "$WORK/big.jsonl" --api-url "http://127.0.0.1:$SINK_A" \
            2>"$WORK/replay-$r.log" || die "replay run $r failed: $(tail -3 "$WORK/replay-$r.log")"
        read -r wall u s kb <"$WORK/t"
        got=$(sink measurements)
        [[ $got == "$BIG_M" ]] || die "replay run $r: sink has $got, expected $BIG_M"
        add replay_mps "$(calc "$got / $wall")"
        add replay_cpu "$(calc "$u + $s")"
        add replay_hwm "$kb"
        add replay_posts "$(sink requests)"
        log "  replay run $r: $(fmt "$(calc "$got / $wall")") measurements/s (${wall} s wall, $(calc "$u + $s") CPU s), max RSS $kb kB"

        timed "$WORK/t" "$PV3" replay "$WORK/big.jsonl" --dry-run --format jsonl >/dev/null 2>"$WORK/dry-$r.log"
        read -r wall u s kb <"$WORK/t"
        add dry_lps "$(calc "$REPLAY_LINES / $wall")"
        add dry_out_lps "$(calc "($BIG_M + $BIG_A) / $wall")"
        add dry_cpu "$(calc "$u + $s")"
        add dry_hwm "$kb"
        log "  dry-run run $r: $(fmt "$(calc "$REPLAY_LINES / $wall")") lines/s, max RSS $kb kB"

        timed "$WORK/t" "$PV3" replay "$WORK/cap100000.jsonl" --dry-run --format jsonl >/dev/null 2>/dev/null
        read -r _ _ _ kb <"$WORK/t"; add dry100k_hwm "$kb"
        sink_reset
        timed "$WORK/t" "$PV3" replay "$WORK/cap100000.jsonl" --api-url "http://127.0.0.1:$SINK_A" 2>/dev/null
        read -r _ _ _ kb <"$WORK/t"; add replay100k_hwm "$kb"
        [[ $(sink measurements) == "$K100_M" ]] || die "replay 100k: loss"
    done
fi

# ---------------------------------------------------------------- backfill
# The figures of replay's summary line in log $1: "decoded delivered skipped
# rejected undelivered queries query_s" (queries and query_s 0 when the line
# names none).
replay_summary() {
    local line
    line=$(grep -E 'records read' "$1" | tail -n 1 || true)
    [[ -n $line ]] || { echo "no summary line in $1" >&2; return 1; }
    # The number in front of $1 in the line (0 if absent).
    _figure() { local v; v=$(grep -oE "[0-9.]+ $1" <<<"$line" | head -n 1 | cut -d' ' -f1 || true); echo "${v:-0}"; }
    # Skipped: already in the API, or repeated in the capture (issue 19).
    echo "$(_figure 'measurements decoded') $(_figure 'measurements delivered')" \
        "$(( $(_figure 'already in the API') + $(_figure 'repeated in the capture') ))" \
        "$(_figure rejected) $(_figure undelivered) $(_figure 'history queries')" \
        "$(grep -oE 'history queries \([0-9.]+ s\)' <<<"$line" | grep -oE '[0-9.]+' || echo 0)"
}
if want backfill; then
    read -r BF_M _ < <(expect "$WORK/big.jsonl")
    log "backfill: $REPLAY_LINES lines -> $BF_M measurements expected; replayed twice into a sink that answers history"
    for r in $(seq "$RUNS"); do
        for pass in 0 1 2; do
            # Pass 0 (--no-skip-existing, its own sink): the same replay
            # without the history check, to see what the check costs.
            if ((pass != 2)); then
                [[ -n ${bf_pid:-} ]] && stop "$bf_pid"
                start_sink "sink-backfill-$r-$pass" --history
                bf_port=$SINK_PORT; bf_pid=$SINK_PID
            fi
            opts=(); ((pass == 0)) && opts=(--no-skip-existing)
            m0=$(sink measurements "$bf_port"); p0=$(sink requests "$bf_port")
            q0=$(sink queries "$bf_port"); rows0=$(sink rows_returned "$bf_port"); sc0=$(cpu_s "$bf_pid")
            log_f=$WORK/backfill-$r-$pass.log
            timed "$WORK/t" "$PV3" replay "$WORK/big.jsonl" --api-url "http://127.0.0.1:$bf_port" "${opts[@]}" \
                2>"$log_f" || die "backfill run $r pass $pass failed: $(tail -3 "$log_f")"
            read -r wall u s kb <"$WORK/t"
            read -r dec del skip rej und q qs < <(replay_summary "$log_f") || die "backfill: $(tail -3 "$log_f")"
            got=$(( $(sink measurements "$bf_port") - m0 )); posts=$(( $(sink requests "$bf_port") - p0 ))
            sq=$(( $(sink queries "$bf_port") - q0 )); rows=$(( $(sink rows_returned "$bf_port") - rows0 ))
            stored=$(sink stored "$bf_port"); sink_cpu=$(calc "$(cpu_s "$bf_pid") - $sc0")
            # Zero loss: every decoded measurement delivered or skipped, the
            # sink got exactly what replay says it delivered, and holds each
            # measurement of the capture once.
            [[ $dec == "$BF_M" ]] || die "backfill run $r pass $pass: $dec decoded, --dry-run says $BF_M"
            [[ $rej == 0 && $und == 0 ]] || die "backfill run $r pass $pass: $rej rejected, $und undelivered"
            (( del + skip == dec )) || die "backfill run $r pass $pass: $del delivered + $skip skipped != $dec decoded"
            [[ $got == "$del" ]] || die "backfill run $r pass $pass: the sink got $got, replay says $del delivered"
            [[ $stored == "$BF_M" ]] || die "backfill run $r pass $pass: the sink holds $stored, expected $BF_M (each once)"
            [[ $sq == "$q" ]] || note "backfill run $r pass $pass: the sink answered $sq history queries, replay counted $q"
            if ((pass == 0)); then
                [[ $del == "$BF_M" && $q == 0 ]] || die "backfill run $r pass 0 (--no-skip-existing): $del delivered of $BF_M, $q history queries"
            elif ((pass == 1)); then
                [[ $del == "$BF_M" ]] || note "backfill run $r pass 1 delivered $del of $BF_M (skipped $skip) into an empty store"
            else
                [[ $del == 0 ]] || die "backfill run $r pass 2: $del measurements delivered again (stored twice)"
            fi
            add "bf${pass}_wall" "$wall"
            add "bf${pass}_mps" "$(calc "$dec / $wall")"
            add "bf${pass}_cpu" "$(calc "$u + $s")"
            add "bf${pass}_hwm" "$kb"
            add "bf${pass}_delivered" "$del"
            add "bf${pass}_skipped" "$skip"
            add "bf${pass}_queries" "$q"
            add "bf${pass}_query_s" "$qs"
            add "bf${pass}_rows" "$rows"
            add "bf${pass}_posts" "$posts"
            add "bf${pass}_sink_cpu" "$sink_cpu"
            log "  backfill run $r pass $pass: $del delivered, $skip skipped of $dec in ${wall} s ($(fmt "$(calc "$dec / $wall")") measurements/s, $(calc "$u + $s") CPU s, max RSS $kb kB); $q history queries (${qs} s, $rows rows), $posts POSTs; sink CPU $sink_cpu s"
        done
        add bf_sink_rss "$(rss_kb "$bf_pid")"
        stop "$bf_pid"; bf_pid=
    done
fi

# ---------------------------------------------------------------- sniff
if want sniff; then
    log "sniff vs mosquitto_sub -F %j: $N_SNIFF messages each, alternating"
    for r in $(seq "$RUNS"); do
        for tool in pv3 mosquitto_sub; do
            out=$WORK/sniff-$tool.jsonl; rm -f "$out"
            cid="bench-$tool-sniff-$r"
            # /usr/bin/time gives the subscriber's CPU (start-up included).
            if [[ $tool == pv3 ]]; then
                /usr/bin/time -f "%U %S %M" -o "$WORK/t-sniff" "$PV3" sniff --mqtt-host 127.0.0.1 \
                    --mqtt-port "$MQ_PORT" --mqtt-client-id "$cid" --count "$N_SNIFF" -o "$out" \
                    2>"$WORK/sniff-$r.log" &
            else
                /usr/bin/time -f "%U %S %M" -o "$WORK/t-sniff" mosquitto_sub -h 127.0.0.1 -p "$MQ_PORT" \
                    -i "$cid" -t 'pv/PV3/PV001001DEV/#' -F %j -C "$N_SNIFF" >"$out" &
            fi
            pid=$!; PIDS+=("$pid")
            wait_subscribed "$cid" "$pid"
            res=$(blast "$WORK/cap$N_SNIFF.jsonl" "$N_SNIFF")
            t0=$(jq -r .start_ns <<<"$res")
            # Both exit on their own after N messages; time to the last write.
            wait "$pid" || die "$tool exited with an error"
            t1=$(date -r "$out" +%s%N)
            read -r u s kb <"$WORK/t-sniff"
            lines=$(wc -l <"$out")
            [[ $lines == "$N_SNIFF" ]] || die "$tool captured $lines of $N_SNIFF"
            add "sniff_${tool}_hwm" "$kb"
            add "sniff_${tool}_rate" "$(calc "$N_SNIFF / (($t1 - $t0) / 1000000000)")"
            add "sniff_${tool}_cpu1k" "$(calc "($u + $s) * 1000 / $N_SNIFF")"
            log "  $tool run $r: $(fmt "$(calc "$N_SNIFF / (($t1 - $t0) / 1000000000)")") messages/s, all $lines captured"
        done
    done
fi

# ---------------------------------------------------------------- soak
if want soak; then
    read -r SOAK_M SOAK_A < <(expect "$WORK/cap$N_SOAK.jsonl")
    # An hour of traffic at SOAK_SPEED x the recorded pace, with the linger
    # scaled by the same factor, so the spool holds batches of the shape a
    # real hour-long outage leaves (a few messages each), not full ones.
    LINGER=${SOAK_LINGER:-$(( 250 / SOAK_SPEED ))}; ((LINGER >= 1)) || LINGER=1
    log "soak: $N_SOAK messages ($SOAK_M measurements, $SOAK_A alarm updates) at ${SOAK_SPEED}x, linger ${LINGER} ms, while the sink answers 503"
    for r in $(seq "$SOAK_RUNS"); do
        sink_reset; sink_fail 1
        state=$WORK/state-soak-$r
        "$PV3" collect --mqtt-host 127.0.0.1 --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-collect-soak-$r" \
            --api-url "http://127.0.0.1:$SINK_A" --state-dir "$state" --stats-interval 0 \
            --linger-ms "$LINGER" --retry-max 1 2>"$WORK/collect-soak-$r.log" &
        pid=$!; PIDS+=("$pid")
        wait_subscribed "bench-collect-soak-$r" "$pid"
        t_pub0=$(now_ns)
        "$PV3" replay "$WORK/cap$N_SOAK.jsonl" --to-mqtt --speed "$SOAK_SPEED" --mqtt-host 127.0.0.1 \
            --mqtt-port "$MQ_PORT" --mqtt-client-id "bench-replay-soak-$r" 2>"$WORK/replay-soak-$r.log" &
        rpid=$!; PIDS+=("$rpid")
        peak=0
        sample_spool() {
            local sz
            sz=$(stat -c %s "$state/spool.redb" 2>/dev/null || echo 0)
            ((sz > peak)) && peak=$sz
            return 0
        }
        while kill -0 "$rpid" 2>/dev/null; do sample_spool; sleep 0.25; done
        wait "$rpid" || die "soak publisher failed"
        t_pub1=$(now_ns)
        # Until everything received is in the spool (status.json every 5 s).
        for _ in $(seq 120); do
            sample_spool
            sm=$(jq -r '.spool_measurements // 0' "$state/status.json" 2>/dev/null || echo 0)
            rc=$(jq -r '.counters.received // 0' "$state/status.json" 2>/dev/null || echo 0)
            ((rc >= N_SOAK && sm >= SOAK_M)) && break
            sleep 0.25
        done
        ((rc >= N_SOAK && sm >= SOAK_M)) || die "soak: only $rc messages / $sm measurements reached the spool"
        spool_batches=$(jq -r .spool_batches "$state/status.json")
        spool_bytes=$(jq -r .spool_bytes "$state/status.json")
        sample_spool
        hwm_out=$(hwm_kb "$pid")
        t_rec=$(now_ns)
        sink_fail 0
        wait_sink "$SINK_A" "$SOAK_M" "$SOAK_A" 30 || die "soak run $r: drain incomplete ($(sink measurements)/$SOAK_M)"
        sleep 0.5
        got=$(sink measurements); first=$(sink first_ns); last=$(sink last_ns); posts=$(sink requests)
        [[ $got == "$SOAK_M" ]] || die "soak run $r: sink has $got, expected $SOAK_M"
        hwm=$(hwm_kb "$pid")
        add soak_rss_file "$(rss_file_kb "$pid")"
        add soak_rss_anon "$(rss_anon_kb "$pid")"
        for _ in $(seq 20); do [[ -e $state/spool.redb ]] || break; sleep 0.1; done
        left=$([[ -e $state/spool.redb ]] && echo "still there" || echo "removed")
        cpu=$(cpu_s "$pid")
        stop "$pid"
        add soak_drain_mps "$(calc "$got / (($last - $first) / 1000000000)")"
        add soak_drain_from_recovery_s "$(calc "($last - $t_rec) / 1000000000")"
        add soak_spool_peak "$peak"
        add soak_spool_batches "$spool_batches"
        add soak_spool_bytes "$spool_bytes"
        add soak_hwm "$hwm"
        add soak_hwm_outage "$hwm_out"
        add soak_posts "$posts"
        add soak_fill_s "$(calc "($t_pub1 - $t_pub0) / 1000000000")"
        add soak_cpu "$cpu"
        log "  soak run $r: $spool_batches batches ($spool_bytes value bytes) spooled, spool.redb peak $peak B; drained $got in $(calc "($last - $first) / 1000000000") s over $posts POSTs; VmHWM $hwm kB; spool file $left"
    done
fi

SIZE=$(stat -c %s "$PV3")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(( $(date +%s) - STARTED ))

# ---------------------------------------------------------------- table
m() { median ${V[$1]:-}; }
row() { printf '| %-58s | %18s | %-22s |\n' "$1" "$2" "$3"; }
ratio() { if [[ $1 == n/a || $2 == n/a ]]; then echo n/a; else printf '%.1f×' "$(calc "$1 / $2")"; fi; }
mb() { [[ $1 == n/a ]] && echo n/a || printf '%.1f MB' "$(calc "$1 / 1024")"; }
{
    echo
    echo "pv3 benchmarks — $(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "load average at start: $LOAD_START; at end: $LOAD_END; medians of $RUNS runs; ${ELAPSED}s"
    echo
    row "measure" "median" "target / ratio"
    row "---" "---:" "---"
    if want fast; then
        row "publisher → broker (mosquitto_sub subscribed), messages/s" "$(fmt "$(m pub_rate)")" "not the bottleneck"
        row "mosquitto_sub alone (broker ceiling), messages/s" "$(fmt "$(m msub_ceiling)")" ""
        row "collect: delivered measurements/s ($N_FAST msgs, zero loss)" "$(fmt "$(m collect_mps)")" "≥ 50,000"
        row "collect: messages/s" "$(fmt "$(m collect_msgps)")" "$(ratio "$(m collect_msgps)" "$(m msub_ceiling)") of mosquitto_sub"
        row "collect: CPU s per 1,000 messages" "$(fmt "$(m collect_cpu1k)" 4)" ""
        row "collect: peak RSS (VmHWM)" "$(mb "$(m collect_hwm)")" ""
        row "collect: POSTs" "$(m collect_posts)" ""
        row "python baseline: delivered measurements/s ($N_PY msgs)" "$(fmt "$(m py_mps)")" ""
        row "python baseline: CPU s per 1,000 messages" "$(fmt "$(m py_cpu1k)" 4)" ""
        row "python baseline: peak RSS" "$(mb "$(m py_hwm)")" ""
        row "collect / python, measurements/s" "$(ratio "$(m collect_mps)" "$(m py_mps)")" "≥ 50×"
        row "python / collect, CPU per message" "$(ratio "$(m py_cpu1k)" "$(m collect_cpu1k)")" ""
    fi
    if want outputs; then
        row "outputs: collect, API only, CPU % of one core" "$(fmt "$(m out_api_cpu)" 3) %" ""
        row "outputs: collect, every output on, CPU % of one core" "$(fmt "$(m out_all_cpu)" 3) %" "< 0.5 %; $(ratio "$(m out_all_cpu)" "$(m out_api_cpu)") API only"
        row "outputs: RSS / peak, API only" "$(mb "$(m out_api_rss)") / $(mb "$(m out_api_hwm)")" ""
        row "outputs: RSS / peak, every output on" "$(mb "$(m out_all_rss)") / $(mb "$(m out_all_hwm)")" "< 10 MB"
    fi
    if want cadence; then
        row "cadence: collect CPU % of one core (${CADENCE_WINDOW} s windows)" "$(fmt "$(m cad_pv3_cpu)" 3) %" "< 0.5 %"
        row "cadence: collect CPU % scaled to 10 msg/s" "$(fmt "$(calc "$(m cad_pv3_cpu) * 10 / $CAD_RATE")" 3) %" "(sample: $(fmt "$CAD_RATE" 1) msg/s)"
        row "cadence: collect RSS (VmRSS) / peak (VmHWM)" "$(mb "$(m cad_pv3_rss)") / $(mb "$(m cad_pv3_hwm)")" "< 10 MB"
        row "cadence: collect RSS at the end, binary pages / heap and stacks" "$(mb "$(m cad_pv3_rss_file)") / $(mb "$(m cad_pv3_rss_anon)")" ""
        row "cadence: python CPU % of one core" "$(fmt "$(m cad_py_cpu)" 3) %" "$(ratio "$(m cad_py_cpu)" "$(m cad_pv3_cpu)") pv3's"
        row "cadence: python RSS / peak" "$(mb "$(m cad_py_rss)") / $(mb "$(m cad_py_hwm)")" ""
        row "cadence: POSTs, pv3 / python" "$(m cad_pv3_posts) / $(m cad_py_posts)" ""
    fi
    if want replay; then
        row "replay ${REPLAY_LINES} lines → sink, measurements/s (zero loss)" "$(fmt "$(m replay_mps)")" "≥ 300,000"
        row "replay → sink: CPU s / peak RSS" "$(fmt "$(m replay_cpu)" 2) / $(mb "$(m replay_hwm)")" ""
        row "replay 100,000 lines → sink: peak RSS" "$(mb "$(m replay100k_hwm)")" "flat?"
        row "replay --dry-run jsonl > /dev/null, input lines/s" "$(fmt "$(m dry_lps)")" "≥ 500,000"
        row "replay --dry-run: output lines/s" "$(fmt "$(m dry_out_lps)")" ""
        row "replay --dry-run: CPU s / peak RSS" "$(fmt "$(m dry_cpu)" 2) / $(mb "$(m dry_hwm)")" ""
        row "replay --dry-run 100,000 lines: peak RSS" "$(mb "$(m dry100k_hwm)")" "flat?"
    fi
    if want sniff; then
        row "sniff: messages/s ($N_SNIFF, all captured)" "$(fmt "$(m sniff_pv3_rate)")" "≥ mosquitto_sub"
        row "mosquitto_sub -F %j: messages/s (all captured)" "$(fmt "$(m sniff_mosquitto_sub_rate)")" "$(ratio "$(m sniff_pv3_rate)" "$(m sniff_mosquitto_sub_rate)") (sniff/sub)"
        row "sniff / mosquitto_sub CPU s per 1,000 messages" "$(fmt "$(m sniff_pv3_cpu1k)" 4) / $(fmt "$(m sniff_mosquitto_sub_cpu1k)" 4)" ""
        row "sniff / mosquitto_sub peak RSS" "$(mb "$(m sniff_pv3_hwm)") / $(mb "$(m sniff_mosquitto_sub_hwm)")" ""
    fi
    if want soak; then
        row "soak: $N_SOAK msgs published in (s, at ${SOAK_SPEED}×)" "$(fmt "$(m soak_fill_s)" 1)" ""
        row "soak: spool batches / value bytes" "$(m soak_spool_batches) / $(m soak_spool_bytes)" ""
        row "soak: spool.redb size at peak" "$(mb "$(calc "$(m soak_spool_peak) / 1024")")" ""
        row "soak: drain rate, measurements/s (first→last 2xx)" "$(fmt "$(m soak_drain_mps)")" ""
        row "soak: drain time from recovery, s" "$(fmt "$(m soak_drain_from_recovery_s)" 2)" ""
        row "soak: peak RSS (outage / overall)" "$(mb "$(m soak_hwm_outage)") / $(mb "$(m soak_hwm)")" ""
        row "soak: RSS after the drain, binary pages / heap and stacks" "$(mb "$(m soak_rss_file)") / $(mb "$(m soak_rss_anon)")" ""
        row "soak: collect CPU s for the whole run" "$(fmt "$(m soak_cpu)" 2)" ""
    fi
    if want backfill; then
        for pass in 0 1 2; do
            case $pass in
                0) what="--no-skip-existing, no history check" ;;
                1) what="empty store" ;;
                2) what="all held" ;;
            esac
            row "backfill ${REPLAY_LINES} lines, pass $pass ($what): measurements/s" "$(fmt "$(m "bf${pass}_mps")")" "decoded / wall"
            row "backfill pass $pass: wall s / CPU s / peak RSS" "$(fmt "$(m "bf${pass}_wall")" 2) / $(fmt "$(m "bf${pass}_cpu")" 2) / $(mb "$(m "bf${pass}_hwm")")" ""
            row "backfill pass $pass: delivered / skipped (of $BF_M decoded)" "$(m "bf${pass}_delivered") / $(m "bf${pass}_skipped")" "$([[ $pass == 2 ]] && echo "0 / all" || echo "all / 0")"
            row "backfill pass $pass: history queries / their time, s" "$(m "bf${pass}_queries") / $(fmt "$(m "bf${pass}_query_s")" 1)" ""
            row "backfill pass $pass: history rows returned / POSTs" "$(m "bf${pass}_rows") / $(m "bf${pass}_posts")" ""
            row "backfill pass $pass: the sink's CPU s" "$(fmt "$(m "bf${pass}_sink_cpu")" 2)" "same 2 cores"
        done
        row "backfill: pass 1 wall / pass 0 wall (the check's cost)" "$(ratio "$(m bf1_wall)" "$(m bf0_wall)")" ""
        row "backfill: pass 2 wall / pass 1 wall" "$(ratio "$(m bf2_wall)" "$(m bf1_wall)")" ""
        row "backfill: sink RSS holding the capture (not pv3's)" "$(mb "$(m bf_sink_rss)")" ""
    fi
    row "release binary size" "$(printf '%.2f MB' "$(calc "$SIZE / 1048576")")" "< 10 MB"
    if ((${#NOTES[@]})); then
        echo
        echo "notes:"
        for n in "${NOTES[@]}"; do echo "  $n"; done
    fi
    echo
    echo "per-run values:"
    for k in $(printf '%s\n' "${!V[@]}" | sort); do echo "  $k:${V[$k]}"; done
} | tee "${RESULTS_FILE:-/dev/null}"
