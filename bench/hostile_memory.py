#!/usr/bin/env python3
"""Peak memory under hostile input (issue 19), for one or more pv3 binaries
side by side. Loopback only: a private Mosquitto on a free port.

  collect-big    collect --dry-run while two 15.6 MB payloads (flat JSON
                 arrays of numbers) arrive on ffr/measurements
  replay-line    replay --dry-run of a capture with one 100 MB line
  watch-ids      watch --once of a capture of 200,000 device ids
  collect-ids    collect --no-api --ha --device-id + while 50,000 device ids
                 each publish one battery power reading

Each figure is the process's peak RSS (GNU time's %M, in MB).

    python3 bench/hostile_memory.py BASELINE_PV3 NEW_PV3 [--only collect-big,...]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from loopback import Mosquitto

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(cmd, out, **kw):
    """Starts `cmd` under GNU time, which writes the peak RSS (kB) to `out`."""
    return subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", out] + cmd, **kw)


def peak_mb(out):
    with open(out) as f:
        return int(f.read().split()[-1]) / 1024


def wait_line(path, text, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return True
        time.sleep(0.05)
    return False


def stop(proc):
    """SIGTERM to pv3 itself (GNU time would die of it and report nothing),
    then GNU time writes the figure as pv3 exits."""
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    proc.wait(60)


def collect_big(pv3, work):
    broker = Mosquitto(work, "message_size_limit 0\n")
    big = os.path.join(work, "big.json")
    if not os.path.exists(big):
        with open(big, "w") as f:
            f.write("[" + ",".join(str(1000 + i % 997) for i in range(3_000_000)) + "]")
    err, out = os.path.join(work, "collect.err"), os.path.join(work, "t-collect")
    proc = timed([pv3, "collect", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                  "--dry-run", "--format", "jsonl"], out,
                 stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_line(err, "subscribed to")
    for _ in range(2):
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t",
                        "pv/PV3/PV001001DEV/ffr/measurements", "-f", big], check=True)
    subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t",
                    "pv/PV3/PV001001DEV/inverter/charge", "-m", '{"power":1}'], check=True)
    time.sleep(3)  # let it take both in (no event to wait on from outside)
    stop(proc)
    broker.stop()
    return peak_mb(out), os.path.getsize(big)


def replay_line(pv3, work):
    capture = os.path.join(work, "line.jsonl")
    if not os.path.exists(capture):
        payload = "[" + ",".join("1000" for _ in range(20_000_000)) + "]"
        with open(capture, "w") as f:
            f.write(json.dumps({"ts": "2026-11-27T14:19:27.000Z",
                                "topic": "pv/PV3/PV001001DEV/ffr/measurements",
                                "payload": payload}) + "\n")
    out = os.path.join(work, "t-replay")
    timed([pv3, "replay", capture, "--dry-run", "--format", "jsonl"], out,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait()
    return peak_mb(out), os.path.getsize(capture)


def ids_capture(work, n):
    capture = os.path.join(work, f"ids-{n}.jsonl")
    if not os.path.exists(capture):
        with open(capture, "w") as f:
            for i in range(n):
                f.write(json.dumps({"ts": "2026-11-27T14:19:27.000Z",
                                    "topic": f"pv/PV3/D{i:06d}/inverter/charge",
                                    "payload": '{"power":591}'}) + "\n")
    return capture


def watch_ids(pv3, work):
    capture = ids_capture(work, 200_000)
    out = os.path.join(work, "t-watch")
    timed([pv3, "watch", capture, "--once", "--format", "json"], out,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait()
    return peak_mb(out), 200_000


def collect_ids(pv3, work):
    broker = Mosquitto(work, "message_size_limit 0\n")
    capture = ids_capture(work, 50_000)
    err, out = os.path.join(work, "ids.err"), os.path.join(work, "t-ids")
    state = tempfile.mkdtemp(dir=work)
    proc = timed([pv3, "collect", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                  "--no-api", "--ha", "--device-id", "+", "--state-dir", state], out,
                 stdout=subprocess.DEVNULL, stderr=open(err, "w"))
    wait_line(err, "subscribed to")
    subprocess.run([sys.executable, os.path.join(HERE, "mqtt_blast.py"), "--port",
                    str(broker.port), capture], check=True, stdout=subprocess.DEVNULL)
    time.sleep(5)  # the outputs publish what they took
    stop(proc)
    broker.stop()
    return peak_mb(out), 50_000


CASES = {"collect-big": collect_big, "replay-line": replay_line,
         "watch-ids": watch_ids, "collect-ids": collect_ids}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--only", default=",".join(CASES))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pv3-hostile-")
    try:
        for case in args.only.split(","):
            row = {"case": case}
            for pv3 in args.binaries:
                mb, size = CASES[case](pv3, work)
                row[pv3] = round(mb, 1)
                row["input"] = size
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
