#!/usr/bin/env python3
"""A Python baseline that behaves like the old PV3 collector, for the ratio
in bench/bench.sh: paho-mqtt + requests, decode in the MQTT callback, one
POST per message (the batch endpoint with that one message's measurements,
or with --single one POST per measurement to the single-measurement
endpoint), alarm states to the alarms endpoint. No queue, no retry, no
batching across messages: what the old collector did.

It decodes every topic of shared/spec/p3-topics.md with the same tables as
pv3 (so the work per message is comparable), but has only the old SOC
filter (none here: every soc is sent).

    python3 bench/baseline_collector.py --mqtt-port P --api-url http://127.0.0.1:S \
        --stats-file stats.json [--client-id ID]
    python3 bench/baseline_collector.py --count-only CAPTURE.jsonl [--limit N]
        # what it would send for a capture: {"messages","posts","measurements","alarms"}

Counts what it sent; writes them to --stats-file every second and on exit
(SIGTERM/SIGINT).
"""
import argparse
import base64
import json
import math
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone

NUM = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


def number(v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and NUM.match(v.strip()):
        return float(v.strip())
    return None


INVERTER = {
    ("BATTERY", "Voltage", None): ("battery_voltage", 1000, "V"),
    ("BATTERY", "ChargeCurrent", None): ("battery_current", 1000, "A"),
    ("BATTERY", "Capacity", None): ("battery_capacity", 1, "%"),
    ("GRID", "Voltage", "Ac"): ("grid_voltage", 1000, "V"),
    ("GRID", "Frequency", None): ("grid_frequency", 1000, "Hz"),
    ("GRID", "Power", "Active"): ("grid_power_inverter", 1000, "W"),
    ("OUTPUT", "Voltage", None): ("output_voltage", 1000, "V"),
    ("OUTPUT", "Frequency", None): ("output_frequency", 1000, "Hz"),
    ("OUTPUT", "Power", "Active"): ("output_active_power", 1000, "W"),
    ("OUTPUT", "Power", "Apparent"): ("output_apparent_power", 1000, "VA"),
}
PYLONTECH = {
    ("StateOfHealth", "Avg"): ("soh", 1, "%"),
    ("StateOfHealth", "Min"): ("soh_min", 1, "%"),
    ("CycleNumber", "Avg"): ("cycle_count_avg", 1, "cycles"),
    ("CycleNumber", "Max"): ("cycle_count_max", 1, "cycles"),
    ("CellTemperature", "Avg"): ("cell_temp_avg", 1000, "C"),
    ("CellTemperature", "Max"): ("cell_temp_max", 1000, "C"),
    ("CellTemperature", "Min"): ("cell_temp_min", 1000, "C"),
    ("BMSTemperature", "Avg"): ("bms_temp_avg", 1000, "C"),
    ("BMSTemperature", "Max"): ("bms_temp_max", 1000, "C"),
    ("CellVoltage", "Max"): ("cell_voltage_max", 1, "mV"),
    ("CellVoltage", "Min"): ("cell_voltage_min", 1, "mV"),
    ("ModuleVoltage", "Avg"): ("module_voltage_avg", 1000, "V"),
    ("Current", "Total"): ("battery_current_total", 1000, "A"),
    ("ChargeVoltageLimit", None): ("charge_voltage_limit", 1000, "V"),
    ("DischargeVoltageLimit", None): ("discharge_voltage_limit", 1000, "V"),
    ("ChargeCurrentLimit", None): ("charge_current_limit", 1000, "A"),
    ("DischargeCurrentLimit", None): ("discharge_current_limit", 1000, "A"),
}
FFR = {"LOCAL": "house_power", "HOUSE": "grid_power", "AUX1": "aux_power"}
TEMPS = {"inverter_temperature": "inverter_temp", "boost_temperature": "boost_temp",
         "inner_temperature": "inner_temp"}
SAFETY = {("PowerRating", "Battery"): "safetycheck_power_rating",
          ("ChgPower", "Max"): "safetycheck_max_charge_power",
          ("DchgPower", "Max"): "safetycheck_max_discharge_power"}


def first(obj):
    if isinstance(obj, list):
        return obj[0] if obj and isinstance(obj[0], dict) else None
    return obj if isinstance(obj, dict) else None


def decode(suffix, data):
    """(suffix, parsed JSON) -> ([(metric, value, unit)], alarms or None)."""
    out, alarms = [], None

    def add(metric, v, unit, div=1):
        v = number(v)
        if v is not None and math.isfinite(v / div):
            out.append((metric, v / div, unit))

    if suffix == "bms/soc":
        if isinstance(data, list):
            for it in data:
                if isinstance(it, dict) and it.get("measurement") == "StateOfCharge":
                    add("soc", it.get("value"), "%", 100)
        elif isinstance(data, dict):
            if "module_addr" in data:
                add(f"soc_module_{data['module_addr']}", data.get("StateOfCharge"), "%", 100)
            else:
                add("soc", data.get("usable_soc", data.get("StateOfCharge")), "%", 100)
    elif suffix == "inverter/measurements":
        for it in data:
            key = (it.get("channel"), it.get("measurement"), it.get("type"))
            row = INVERTER.get(key) or INVERTER.get((key[0], key[1], None))
            if row:
                add(row[0], it.get("value"), row[2], row[1])
    elif suffix == "pylontech/info":
        for it in data:
            key = (it.get("measurement"), it.get("type"))
            row = PYLONTECH.get(key) or PYLONTECH.get((key[0], None))
            if row:
                v = number(it.get("value"))
                if v is not None:
                    v = v / row[1]
                    out.append((row[0], abs(v) if row[0] == "discharge_current_limit" else v, row[2]))
    elif suffix == "ffr/measurements":
        for it in data:
            if it.get("measurement") == "Power" and it.get("type") == "Active" and it.get("channel") in FFR:
                add(FFR[it["channel"]], it.get("value"), "W", 1000)
    elif suffix == "inverter/charge":
        add("battery_power", data.get("power"), "W")
    elif suffix == "inverter/alarms":
        flags = {}
        for k, v in data.items():
            if k in TEMPS:
                add(TEMPS[k], v, "C")
            elif k in ("timestamp", "warnings_summary"):
                continue
            elif v in ("1", 1, True):
                flags[k] = True
            elif v in ("0", 0, False):
                flags[k] = False
        if flags:
            out.append(("alarm_count", float(sum(flags.values())), ""))
            alarms = flags
    elif suffix == "schedule/event":
        add("schedule_event", data.get("event"), "")
        add("schedule_setpoint", data.get("setpoint"), "W")
    elif suffix == "m4/maxpower":
        o = first(data)
        if o:
            add("max_charge_power", o.get("ChgPower"), "W")
            add("max_discharge_power", o.get("DchgPower"), "W")
    elif suffix == "eps/status":
        o = first(data)
        if o:
            add("eps_reserve", o.get("Reserve"), "%")
            add("eps_mode", o.get("Mode"), "")
    elif suffix == "eps_schedule/event":
        o = first(data)
        if o:
            add("eps_schedule_reserve", o.get("reserved_soc"), "%")
            if "event" in o:
                ev = o["event"]
                out.append(("eps_schedule_event", 1.0 if isinstance(ev, str) and ev.lower() == "on" else 0.0, ""))
    elif suffix == "ffrcontroller/state":
        add("ffr_controller_state", data.get("State"), "")
    elif suffix == "safetycheck/state":
        o = first(data)
        if o:
            for k, v in o.items():
                add(f"safetycheck_{k}", v, "")
    elif suffix == "safetycheck/measurements":
        for it in data:
            m = SAFETY.get((it.get("measurement"), it.get("type")))
            if m:
                add(m, it.get("value"), "W", 1000)
    return out, alarms


def decode_message(topic, payload):
    parts = topic.split("/", 3)
    if len(parts) < 4 or parts[0] != "pv" or parts[1] != "PV3":
        return None, [], None
    try:
        data = json.loads(payload)
        ms, alarms = decode(parts[3], data)
    except Exception:  # the old collector logged and went on
        return parts[2], [], None
    return parts[2], ms, alarms


class Stats:
    def __init__(self, path):
        self.path = path
        self.messages = self.posts = self.measurements = self.alarms = self.errors = 0
        self.lock = threading.Lock()

    def dump(self):
        if not self.path:
            return
        with self.lock:
            d = {"messages": self.messages, "posts": self.posts,
                 "measurements": self.measurements, "alarms": self.alarms,
                 "post_errors": self.errors}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(d, f)
        import os
        os.replace(tmp, self.path)


def count_only(path, limit):
    n = posts = meas = alarms = 0
    with open(path) as f:
        for line in f:
            if limit and n >= limit:
                break
            r = json.loads(line)
            n += 1
            payload = base64.b64decode(r["payload_b64"]) if "payload_b64" in r else r["payload"].encode()
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                continue
            _, ms, al = decode_message(r["topic"], text)
            if ms:
                posts += 1
                meas += len(ms)
            if al:
                alarms += 1
    print(json.dumps({"messages": n, "posts": posts, "measurements": meas, "alarms": alarms}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--device-id", default="PV001001DEV")
    ap.add_argument("--client-id", default="pv3-bench-baseline")
    ap.add_argument("--api-url", default="http://127.0.0.1:8800")
    ap.add_argument("--single", action="store_true", help="one POST per measurement")
    ap.add_argument("--no-keepalive", action="store_true", help="requests.post per call, a new connection each time")
    ap.add_argument("--stats-file")
    ap.add_argument("--count-only", metavar="CAPTURE")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    if args.count_only:
        return count_only(args.count_only, args.limit)
    for host in (args.mqtt_host, args.api_url.split("//")[-1].split(":")[0]):
        if not (host.startswith("127.") or host == "localhost"):
            sys.exit("loopback only")

    import paho.mqtt.client as mqtt
    import requests

    stats = Stats(args.stats_file)
    http = requests if args.no_keepalive else requests.Session()
    base = args.api_url.rstrip("/")

    def on_connect(client, userdata, flags, reason_code, properties=None):
        client.subscribe(f"pv/PV3/{args.device_id}/#", qos=1)

    def on_message(client, userdata, msg):
        with stats.lock:
            stats.messages += 1
        try:
            text = msg.payload.decode()
        except UnicodeDecodeError:
            return
        device, ms, alarms = decode_message(msg.topic, text)
        if not device:
            return
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = [{"metric_name": m, "metric_value": v, "unit": u, "source_topic": msg.topic,
                 "timestamp": ts} for m, v, u in ms]
        try:
            if body and args.single:
                for item in body:
                    r = http.post(f"{base}/api/devices/{device}/measurements", json=item, timeout=10)
                    with stats.lock:
                        stats.posts += 1
                        if r.status_code // 100 == 2:
                            stats.measurements += 1
                        else:
                            stats.errors += 1
            elif body:
                r = http.post(f"{base}/api/devices/{device}/measurements/batch", json=body, timeout=10)
                with stats.lock:
                    stats.posts += 1
                    if r.status_code // 100 == 2:
                        stats.measurements += len(body)
                    else:
                        stats.errors += 1  # the old collector dropped it
            if alarms:
                r = http.post(f"{base}/api/devices/{device}/alarms", json=alarms, timeout=10)
                with stats.lock:
                    if r.status_code // 100 == 2:
                        stats.alarms += 1
                    else:
                        stats.errors += 1
        except requests.RequestException:
            with stats.lock:
                stats.errors += 1

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.on_connect = on_connect
    client.on_message = on_message
    client.max_queued_messages_set(0)

    stop = threading.Event()

    def on_signal(*_):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def dumper():
        while not stop.wait(1.0):
            stats.dump()

    threading.Thread(target=dumper, daemon=True).start()
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=60)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    stats.dump()


if __name__ == "__main__":
    main()
