#!/usr/bin/env python3
"""Make a realistic sample capture of a Powervault P3's MQTT traffic for pv3.

Two modes (python3, standard library only):

1. Source capture (synthetic, deterministic):

       python3 scripts/make-sample.py OUT.jsonl

   writes three minutes of traffic for device PV001001DEV in pv3's capture
   format (JSON Lines, as in the spec capture-format.md), timestamps starting
   at 2026-11-27T14:00:00.000Z, in time order, about 6 messages/s. Every
   topic of p3-topics.md appears at a plausible cadence; values are anchored
   on the spec's "one minute of a real unit" example (SOC 97 %, battery
   49.8 V / 591 W discharging, grid CT -406.464 W exporting, ...). Exactly one
   alarm is active (battery_low) and exactly one message cannot be decoded:
   an inverter/charge payload truncated to '{"power":5' about 60 s in. The
   m4/pylontech_alerts payloads are small non-UTF-8 blobs, so they are
   written as "payload_b64". A fixed random seed (--seed, default 3) makes
   the output byte-for-byte reproducible.

2. Capture made by pv3 sniff at the real cadence (what examples/p3-sample.jsonl is):

       python3 scripts/make-sample.py --sniff examples/p3-sample.jsonl [--pv3 PATH]

   generates the source capture in a temporary directory, starts a private
   mosquitto on a free loopback port (127.0.0.1 only, anonymous), starts
   `pv3 sniff --mqtt-host 127.0.0.1 --mqtt-port PORT -o TMP` and waits for
   its "subscribed to" log line, runs
   `pv3 replay SOURCE --to-mqtt --mqtt-host 127.0.0.1 --mqtt-port PORT --speed 1`
   (about 3 minutes of real time), stops sniff with SIGINT, checks that it
   exited 0 and captured as many messages as were replayed, prints sniff's
   per-topic table and moves the capture to OUT (replacing it). The
   timestamps in OUT are therefore the real receive times of that run.
   --pv3 defaults to target/debug/pv3 of this repository; --mosquitto to
   /usr/sbin/mosquitto (or the one on PATH).

Check the result with:

       target/debug/pv3 replay examples/p3-sample.jsonl --dry-run --format jsonl
"""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

DEVICE = "PV001001DEV"
START = datetime(2026, 11, 27, 14, 0, 0, tzinfo=timezone.utc)
DURATION = 180  # seconds
BAD_AT = 60  # the inverter/charge message at this second is truncated JSON

ALARM_FLAGS = [
    "fan_lock", "initial_fail", "battery_weak", "grid_ip_voltage_outofrange",
    "grid_ip_freq_outofrange", "battery_discharge_low", "battery_low",
    "battery_under", "pv_loss", "pv1_loss", "pv2_loss", "pv_low",
    "grid_freq_under_limit", "grid_freq_over_limit", "grid_voltage_under_limit",
    "grid_voltage_over_limit", "feeding_av_voltage_over", "ground_loss",
    "islanding_detect", "no_battery", "over_temperature", "overload",
    "external_flash_fail",
]
ACTIVE_ALARM = "battery_low"

# Per-module SOC offsets from the aggregate, in hundredths of a percent.
MODULE_OFFSETS = [110, -60, 40, -140]


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def local_time(t):
    """The controller's zone-less local time (UK: UTC in November)."""
    return (START + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S")


class Plant:
    """Slowly drifting 'true' state of the unit, sampled with noise."""

    def __init__(self, rng):
        self.rng = rng
        self.grid_v = 225800.0  # mV, random walk kept in 225..240 V
        self.cell_t = 20100.0  # m°C
        self.bms_t = 20300.0

    def step_grid_voltage(self):
        self.grid_v += self.rng.gauss(0, 350)
        self.grid_v = min(max(self.grid_v, 225200.0), 239500.0)
        return int(round(self.grid_v))

    def battery_power(self):
        return int(round(591 + self.rng.gauss(0, 9)))

    def soc(self, t):
        return 9700 - int(t // 30)


def generate(seed):
    """Returns [(t_seconds, suffix, payload_bytes)] sorted by time."""
    rng = random.Random(seed)
    plant = Plant(rng)
    events = []

    def add(t, suffix, payload):
        t = max(0.0, t + rng.uniform(-0.02, 0.02))
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        events.append((t, suffix, payload))

    for s in range(DURATION):
        # inverter/charge, every 1 s (+ discharging, - charging)
        if s == BAD_AT:
            add(s + 0.05, "inverter/charge", '{"power":5')  # truncated: decode error
        else:
            add(s + 0.05, "inverter/charge", dumps({"power": plant.battery_power()}))

        # pylontech/info, one row every 0.5 s, cycling through the 17 rows
        for half in (0, 1):
            i = 2 * s + half
            add(s + 0.15 + 0.5 * half, "pylontech/info", dumps([pylontech_row(i, plant, rng)]))

        # ffr/measurements (CT clamps), every 1 s
        add(s + 0.30, "ffr/measurements", dumps([
            {"channel": "LOCAL", "measurement": "Power", "type": "Active",
             "value": int(round(11736 + rng.gauss(0, 900)))},
            {"channel": "HOUSE", "measurement": "Power", "type": "Active",
             "value": int(round(-406464 + rng.gauss(0, 6000)))},
            {"channel": "AUX1", "measurement": "Power", "type": "Active",
             "value": int(round(-1480 + rng.gauss(0, 60)))},
        ]))

        # inverter/measurements, every 2 s
        if s % 2 == 0:
            add(s + 0.45, "inverter/measurements", dumps(inverter_table(plant, rng)))

        # bms/soc: aggregate then the four modules, every 5 s
        if s % 5 == 0:
            soc = plant.soc(s)
            add(s + 0.80, "bms/soc", dumps([{"measurement": "StateOfCharge", "value": soc}]))
            for k, off in enumerate(MODULE_OFFSETS):
                add(s + 0.83 + 0.03 * k, "bms/soc",
                    dumps({"module_addr": k, "StateOfCharge": soc + off + rng.randint(-8, 8)}))

        # inverter/alarms and m4/maxpower, every 10 s
        if s % 10 == 1:
            add(s + 0.55, "inverter/alarms", dumps(alarms(s, rng)))
        if s % 10 == 3:
            add(s + 0.95, "m4/maxpower", dumps([{"ChgPower": 4792, "DchgPower": -6750}]))

        # every 30 s
        if s % 30 == 7:
            add(s + 0.20, "schedule/event",
                dumps({"time": local_time(s), "event": 2, "setpoint": 600}))
            add(s + 0.25, "eps/status", dumps({"Reserve": 20, "Mode": 0}))
        if s % 30 == 12:
            add(s + 0.70, "ffrcontroller/state", dumps({"State": 0}))

        # every 60 s
        if s % 60 == 20:
            add(s + 0.10, "eps_schedule/event",
                dumps({"reserved_soc": 0, "time": local_time(s), "event": "off"}))
        if s % 60 == 33:
            add(s + 0.40, "safetycheck/state", dumps({
                "State": 2, "Result": 0, "Attempts": "1",
                "LastRun": "2026-11-27T06:00:12", "Enabled": True}))
            add(s + 0.42, "safetycheck/measurements", dumps([
                {"measurement": "PowerRating", "type": "Battery", "value": 5000000},
                {"measurement": "ChgPower", "type": "Max", "value": 4792000},
                {"measurement": "DchgPower", "type": "Max", "value": -6750000},
            ]))
        if s % 60 == 41:
            add(s + 0.90, "m4/pylontech_alerts", pylontech_alerts(s))

    events.sort(key=lambda e: e[0])  # stable: same-time events keep their order
    return events


def inverter_table(plant, rng):
    bp = plant.battery_power()
    bat_v = int(round(49800 + rng.gauss(0, 35)))
    bat_i = -int(round(bp / (bat_v / 1000.0) * 1000))  # mA, negative = discharging
    out_p = 137 + rng.gauss(0, 6)  # W, EPS-backed loads
    grid_p = -(bp * 0.94 - out_p) + rng.gauss(0, 5)  # W, inverter AC side, - = export
    return [
        {"channel": "BATTERY", "measurement": "Voltage", "type": "Dc", "value": bat_v},
        {"channel": "BATTERY", "measurement": "ChargeCurrent", "type": "Dc", "value": bat_i},
        {"channel": "BATTERY", "measurement": "Capacity", "type": "Percent", "value": 77},
        {"channel": "GRID", "measurement": "Voltage", "type": "Ac", "value": plant.step_grid_voltage()},
        {"channel": "GRID", "measurement": "Frequency", "type": "Ac",
         "value": int(round(50000 + rng.gauss(0, 18)))},
        {"channel": "GRID", "measurement": "Power", "type": "Active", "value": int(round(grid_p * 1000))},
        {"channel": "OUTPUT", "measurement": "Voltage", "type": "Ac",
         "value": int(round(230000 + rng.gauss(0, 120)))},
        {"channel": "OUTPUT", "measurement": "Frequency", "type": "Ac",
         "value": int(round(50000 + rng.gauss(0, 5)))},
        {"channel": "OUTPUT", "measurement": "Power", "type": "Active", "value": int(round(out_p * 1000))},
        {"channel": "OUTPUT", "measurement": "Power", "type": "Apparent",
         "value": int(round((out_p / 0.83 + rng.gauss(0, 3)) * 1000))},
    ]


PYLONTECH_ROWS = [
    ("StateOfHealth", "Avg"), ("StateOfHealth", "Min"),
    ("CycleNumber", "Avg"), ("CycleNumber", "Max"),
    ("CellTemperature", "Avg"), ("CellTemperature", "Max"), ("CellTemperature", "Min"),
    ("BMSTemperature", "Avg"), ("BMSTemperature", "Max"),
    ("CellVoltage", "Max"), ("CellVoltage", "Min"),
    ("ModuleVoltage", "Avg"),
    ("Current", "Total"),
    ("ChargeVoltageLimit", "Max"), ("DischargeVoltageLimit", "Min"),
    ("ChargeCurrentLimit", "Max"), ("DischargeCurrentLimit", "Max"),
]


def pylontech_row(i, plant, rng):
    measurement, typ = PYLONTECH_ROWS[i % len(PYLONTECH_ROWS)]
    if measurement == "CellTemperature" and typ == "Avg":
        plant.cell_t += rng.gauss(0, 15)
    if measurement == "BMSTemperature" and typ == "Avg":
        plant.bms_t += rng.gauss(0, 15)
    value = {
        ("StateOfHealth", "Avg"): 92,
        ("StateOfHealth", "Min"): 91,
        ("CycleNumber", "Avg"): 844,
        ("CycleNumber", "Max"): 877,
        ("CellTemperature", "Avg"): int(round(plant.cell_t)),
        ("CellTemperature", "Max"): int(round(plant.cell_t + 800)),
        ("CellTemperature", "Min"): int(round(plant.cell_t - 700)),
        ("BMSTemperature", "Avg"): int(round(plant.bms_t)),
        ("BMSTemperature", "Max"): int(round(plant.bms_t + 500)),
        ("CellVoltage", "Max"): 3317 + rng.choice((-1, 0, 0, 0, 1)),
        ("CellVoltage", "Min"): 3315 + rng.choice((-1, 0, 0, 0, 1)),
        ("ModuleVoltage", "Avg"): int(round(49746 + rng.gauss(0, 12))),
        ("Current", "Total"): int(round(-10230 + rng.gauss(0, 120))),
        ("ChargeVoltageLimit", "Max"): 53250,
        ("DischargeVoltageLimit", "Min"): 45000,
        ("ChargeCurrentLimit", "Max"): 60000,
        ("DischargeCurrentLimit", "Max"): -150000,  # published negative
    }[(measurement, typ)]
    return {"measurement": measurement, "type": typ, "value": value}


def alarms(s, rng):
    obj = {"timestamp": local_time(s)}
    for flag in ALARM_FLAGS:
        obj[flag] = "1" if flag == ACTIVE_ALARM else "0"
    obj["inverter_temperature"] = str(38 + rng.choice((0, 0, 1)))
    obj["boost_temperature"] = str(41 + rng.choice((-1, 0, 0)))
    obj["inner_temperature"] = "%.1f" % (35.5 + rng.choice((-0.5, 0, 0, 0.5)))
    obj["warnings_summary"] = ACTIVE_ALARM
    return obj


def pylontech_alerts(s):
    """A small opaque binary blob (format undocumented); not valid UTF-8."""
    body = bytes([0xFF, 0xFE, 0x04, 0x00, 0x00, 0x00, 0x00, 0x02, s & 0xFF])
    return body + bytes([sum(body) & 0xFF])


def record(t, suffix, payload):
    ts = (START + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    rec = {"ts": ts, "topic": f"pv/PV3/{DEVICE}/{suffix}", "qos": 0, "retain": False}
    try:
        rec["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        rec["payload_b64"] = base64.b64encode(payload).decode("ascii")
    return dumps(rec)


def write_source(path, seed):
    events = generate(seed)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for t, suffix, payload in events:
            f.write(record(t, suffix, payload) + "\n")
    return len(events)


# --- sniff orchestration -----------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{port}")


def wait_for_text(path, text, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in Path(path).read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"pv3 sniff exited early with status {proc.returncode}:\n"
                               + Path(path).read_text(errors="replace"))
        time.sleep(0.1)
    raise RuntimeError(f"pv3 sniff did not log {text!r} within {timeout:.0f} s")


def clean_env():
    """pv3 reads MQTT_*, API_*, P3_DEVICE_ID (and RUST_LOG, which could hide the
    "subscribed to" line) from the environment: keep them out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MQTT_", "API_")) and k not in ("P3_DEVICE_ID", "RUST_LOG")}
    env["NO_COLOR"] = "1"
    return env


def stop(proc, sig=signal.SIGTERM, timeout=10.0):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sniff(out, seed, pv3, mosquitto):
    pv3 = str(Path(pv3).resolve())
    env = clean_env()
    with tempfile.TemporaryDirectory(prefix="pv3-sample-") as tmp:
        tmp = Path(tmp)
        source = tmp / "source.jsonl"
        n = write_source(source, seed)
        print(f"source capture: {n} messages", file=sys.stderr)

        port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\nlog_dest stderr\n")
        broker_log = open(tmp / "mosquitto.log", "wb")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)],
                                  stdout=broker_log, stderr=subprocess.STDOUT)
        sniffer = None
        try:
            wait_for_port(port, broker)
            captured = tmp / "sample.jsonl"
            sniff_err_path = tmp / "sniff.stderr"
            sniff_err = open(sniff_err_path, "wb")
            sniffer = subprocess.Popen(
                [pv3, "sniff", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
                 "--device-id", DEVICE, "-o", str(captured)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sniff_err, env=env)
            wait_for_text(sniff_err_path, "subscribed to", sniffer)
            print(f"sniff subscribed; replaying at --speed 1 to 127.0.0.1:{port} "
                  f"(about {DURATION // 60} minutes)", file=sys.stderr)

            replay = subprocess.run(
                [pv3, "replay", str(source), "--to-mqtt", "--mqtt-host", "127.0.0.1",
                 "--mqtt-port", str(port), "--speed", "1"],
                stdin=subprocess.DEVNULL, env=env)
            if replay.returncode != 0:
                raise RuntimeError(f"pv3 replay --to-mqtt exited with status {replay.returncode}")

            time.sleep(2.0)  # let the last messages arrive
            sniffer.send_signal(signal.SIGINT)
            try:
                rc = sniffer.wait(30)
            except subprocess.TimeoutExpired:
                raise RuntimeError("pv3 sniff did not exit within 30 s of SIGINT")
            sniff_err.close()
            sys.stderr.write(sniff_err_path.read_text(errors="replace"))
            if rc != 0:
                raise RuntimeError(f"pv3 sniff exited with status {rc} after SIGINT")

            lines = [l for l in captured.read_bytes().split(b"\n") if l.strip()]
            if len(lines) != n:
                raise RuntimeError(f"sniff captured {len(lines)} messages, replay sent {n}")
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(captured), out)
            print(f"wrote {out}: {len(lines)} messages, {Path(out).stat().st_size} bytes",
                  file=sys.stderr)
        finally:
            if sniffer is not None:
                stop(sniffer, signal.SIGINT)
            stop(broker)
            broker_log.close()


def main():
    repo = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="where to write the capture")
    p.add_argument("--sniff", action="store_true",
                   help="capture through a private mosquitto with pv3 sniff (about 3 minutes)")
    p.add_argument("--pv3", default=str(repo / "target" / "debug" / "pv3"),
                   help="pv3 binary (default: %(default)s)")
    p.add_argument("--mosquitto",
                   default="/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists()
                   else (shutil.which("mosquitto") or "mosquitto"),
                   help="mosquitto binary (default: %(default)s)")
    p.add_argument("--seed", type=int, default=3, help="random seed (default: %(default)s)")
    args = p.parse_args()
    if args.sniff:
        try:
            sniff(args.output, args.seed, args.pv3, args.mosquitto)
        except RuntimeError as e:
            sys.exit(f"make-sample: {e}")
    else:
        n = write_source(args.output, args.seed)
        print(f"wrote {args.output}: {n} messages", file=sys.stderr)


if __name__ == "__main__":
    main()
