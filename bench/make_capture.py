#!/usr/bin/env python3
"""Make a long synthetic capture by repeating examples/p3-sample.jsonl.

Each repetition is shifted by --period seconds (default 180: the sample
lasts 179.6 s), so the result is one continuous capture at the sample's
real cadence (~5.9 messages/s) with no gap of 300 s or more: the SOC
filter sees the same sequence in replay (capture times) as in collect
(receive times), so `pv3 replay --dry-run` gives the exact count that
collect must deliver.

    python3 bench/make_capture.py --lines 1000000 OUT.jsonl
"""
import argparse
import calendar
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--lines", type=int, required=True)
    ap.add_argument("--sample", default="examples/p3-sample.jsonl")
    ap.add_argument("--period", type=float, default=180.0)
    args = ap.parse_args()

    parsed = []  # (offset ms from the first record, the line after its ts)
    base_ms = None
    with open(args.sample) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            # pv3 writes ts first: {"ts":"YYYY-MM-DDTHH:MM:SS.mmmZ",...
            if not line.startswith('{"ts":"') or line[30] != "Z":
                sys.exit(f"unexpected line shape: {line[:60]}")
            ts = line[7:31]
            secs = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
            ms = secs * 1000 + int(ts[20:23])
            if base_ms is None:
                base_ms = ms
            parsed.append((ms - base_ms, line[31:]))
    period_ms = int(args.period * 1000)
    if parsed[-1][0] >= period_ms:
        sys.exit("--period is shorter than the sample")

    written = 0
    rep = 0
    with open(args.out, "w", buffering=1 << 20) as out:
        while written < args.lines:
            chunk = []
            rep_base = base_ms + rep * period_ms
            for off, rest in parsed:
                if written >= args.lines:
                    break
                t = rep_base + off
                s, ms = divmod(t, 1000)
                chunk.append(
                    '{"ts":"'
                    + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
                    + ".%03dZ" % ms
                    + rest
                    + "\n"
                )
                written += 1
            out.write("".join(chunk))
            rep += 1
    print(f"{args.out}: {written} lines, {rep} repetitions of {args.sample}", file=sys.stderr)


if __name__ == "__main__":
    main()
