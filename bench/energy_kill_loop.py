#!/usr/bin/env python3
"""The energy counters under kill -9 (issue 19): a private Mosquitto, a P3
stand-in charging the battery at a constant 2 kW (one reading a second, the
P3's cadence), and `pv3 collect --no-api --publish --metrics-listen` killed
with SIGKILL every 10-30 s and started again at once, for DURATION seconds.

It checks and prints:
- every `battery_charge_energy` total published on the flat topic, and every
  one scraped from /metrics, never goes down (Home Assistant and Prometheus
  would count a drop as a meter reset);
- the final total against the truth (2 kW for the time readings flowed):
  never above it (nothing counted twice), and below it by no more than the
  documented loss: per kill, the energy since the last save (saves are at
  most a minute apart, counted from the file's last write) plus the segment
  a restart misses.

    python3 bench/energy_kill_loop.py [--duration 300] [--pv3 target/release/pv3]

Loopback only. Exit status 1 when a check fails.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from loopback import Mosquitto, free_port

DEVICE = "PV001001DEV"
WATTS = 2000.0
SERIES = f'pv3_battery_charge_energy_joules_total{{device="{DEVICE}"}}'


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(SERIES + " "):
                    return float(line.split()[-1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--pv3", default="target/release/pv3")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--life", default="10-30", help="seconds between kills, MIN-MAX")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    life = tuple(float(x) for x in args.life.split("-"))
    work = tempfile.mkdtemp(prefix="pv3-kill-loop-")
    state = os.path.join(work, "state")
    os.makedirs(state)
    broker = Mosquitto(work)
    port = broker.port

    published = []
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-v", "-t", f"pv3/{DEVICE}/battery_charge_energy"],
        stdout=subprocess.PIPE, text=True)

    def read_sub():
        for line in sub.stdout:
            published.append(float(line.split()[-1]))
    threading.Thread(target=read_sub, daemon=True).start()

    feeder = subprocess.Popen(
        ["mosquitto_pub", "-p", str(port), "-l", "-t", f"pv/PV3/{DEVICE}/inverter/charge"],
        stdin=subprocess.PIPE, text=True)
    stop = threading.Event()
    fed = []

    def feed():
        while not stop.is_set():
            feeder.stdin.write(json.dumps({"power": -WATTS}) + "\n")
            feeder.stdin.flush()
            fed.append(time.time())
            stop.wait(1.0)
    threading.Thread(target=feed, daemon=True).start()

    scraped = []
    kills = 0
    metrics = free_port()
    env = dict(os.environ, STATE_DIRECTORY=state)
    command = [args.pv3, "collect", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
               "--no-api", "--publish", "--publish-interval", "0",
               "--metrics-listen", f"127.0.0.1:{metrics}"]
    end = time.time() + args.duration
    log = open(os.path.join(work, "pv3.log"), "a")
    while True:
        pv3 = subprocess.Popen(command, env=env, stderr=log)
        life_end = min(end, time.time() + rng.uniform(*life))
        while time.time() < life_end:
            value = scrape(metrics)
            if value is not None:
                scraped.append(value)
            time.sleep(1.0)
        if time.time() >= end:
            pv3.send_signal(signal.SIGTERM)
            pv3.wait(30)
            break
        pv3.kill()
        pv3.wait()
        kills += 1
    stop.set()
    time.sleep(1.5)
    feeder.stdin.close()
    feeder.wait(10)
    sub.terminate()
    broker.stop()

    with open(os.path.join(state, "energy.json")) as f:
        final = json.load(f)["devices"][DEVICE]["battery_charge_energy"]
    truth = WATTS * (fed[-1] - fed[0]) / 3.6e6
    per_kill = WATTS * (60 + 5 + 2) / 3.6e6  # a minute, the 5 s look, a missed segment
    down = [b - a for a, b in zip(published, published[1:]) if b < a]
    down_scraped = [b - a for a, b in zip(scraped, scraped[1:]) if b < a]
    loss = truth - final
    report = {
        "life_s": args.life,
        "duration_s": round(fed[-1] - fed[0], 1),
        "kills": kills,
        "published": len(published),
        "scraped": len(scraped),
        "published_drops": len(down),
        "scraped_drops": len(down_scraped),
        "truth_kwh": round(truth, 6),
        "final_kwh": round(final, 6),
        "loss_kwh": round(loss, 6),
        "loss_share": round(loss / truth, 3) if truth else None,
        "loss_per_kill_kwh": round(loss / kills, 6) if kills else None,
        "documented_bound_kwh": round(kills * per_kill + 2 * WATTS / 3.6e6, 6),
    }
    print(json.dumps(report))
    ok = (not down and not down_scraped and final <= truth + 1e-6
          and loss <= report["documented_bound_kwh"])
    if not ok:
        print(f"FAILED (work dir kept: {work})", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
