#!/usr/bin/env python3
"""Publish the records of a capture to an MQTT broker as fast as the socket
takes them: every PUBLISH packet is encoded before the clock starts, then
the whole stream goes out in large writes (QoS as recorded, retain as
recorded). Plain sockets, MQTT 3.1.1, no library: the publisher must never
be what a benchmark measures.

    python3 bench/mqtt_blast.py --port 1883 --count 200000 CAPTURE.jsonl

Prints one JSON line on stdout: {"messages", "bytes", "start_ns", "end_ns"}
(Unix ns; end = the broker has read everything: it answered our
DISCONNECT by closing the connection).
"""
import argparse
import base64
import json
import socket
import struct
import sys
import time


def remaining_length(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def publish_packet(topic, payload, qos, retain, pid):
    var = utf8(topic)
    if qos:
        var += struct.pack("!H", pid)
    body = var + payload
    return bytes([0x30 | (qos << 1) | (1 if retain else 0)]) + remaining_length(len(body)) + body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=0, help="first N records (0: all)")
    ap.add_argument("--qos", type=int, default=None, help="override the recorded QoS (0 or 1)")
    args = ap.parse_args()
    if not args.host.startswith("127.") and args.host != "localhost":
        sys.exit("loopback only")

    chunks, n, pid = [], 0, 0
    with open(args.capture) as f:
        for line in f:
            if args.count and n >= args.count:
                break
            r = json.loads(line)
            if "payload_b64" in r:
                payload = base64.b64decode(r["payload_b64"])
            else:
                payload = r["payload"].encode()
            qos = r.get("qos", 0) if args.qos is None else args.qos
            retain = bool(r.get("retain", False))
            pid = pid % 65535 + 1
            chunks.append(publish_packet(r["topic"], payload, qos, retain, pid))
            n += 1
    stream = b"".join(chunks)
    del chunks

    s = socket.create_connection((args.host, args.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    cid = b"pv3-bench-blast"
    connect_var = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + struct.pack("!H", len(cid)) + cid
    s.sendall(bytes([0x10]) + remaining_length(len(connect_var)) + connect_var)
    connack = s.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        sys.exit(f"CONNACK refused: {connack!r}")
    # (QoS 1 PUBACKs, if any, wait in the socket until the end.)
    start = time.time_ns()
    view = memoryview(stream)
    step = 1 << 20
    for i in range(0, len(view), step):
        s.sendall(view[i : i + step])
    s.sendall(b"\xe0\x00")  # DISCONNECT
    s.shutdown(socket.SHUT_WR)
    # The broker closes once it has read DISCONNECT, i.e. everything before it.
    while s.recv(65536):
        pass
    end = time.time_ns()
    s.close()
    print(json.dumps({"messages": n, "bytes": len(stream), "start_ns": start, "end_ns": end}))


if __name__ == "__main__":
    main()
