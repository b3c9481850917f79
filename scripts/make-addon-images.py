#!/usr/bin/env python3
"""Draws the Home Assistant add-on's icon.png (128x128) and logo.png
(250x100) in ha-addon/pv3/: a battery, three quarters charged, and for the
logo the letters "pv3". Standard library only (zlib for the PNG), so the
images can be remade anywhere: python3 scripts/make-addon-images.py
"""
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "ha-addon" / "pv3"

CLEAR = (0, 0, 0, 0)
BODY = (3, 169, 244, 255)  # Home Assistant's blue
CHARGE = (76, 175, 80, 255)  # green
INK = (33, 33, 33, 255)


def canvas(w, h):
    return [[CLEAR] * w for _ in range(h)]


def rect(img, x0, y0, x1, y1, colour):
    for y in range(max(0, y0), min(len(img), y1)):
        row = img[y]
        for x in range(max(0, x0), min(len(row), x1)):
            row[x] = colour


def battery(img, x, y, w, h):
    """A battery lying on its side: outline, terminal, 3/4 charge."""
    t = max(3, h // 12)  # outline thickness
    rect(img, x, y, x + w, y + h, BODY)
    rect(img, x + t, y + t, x + w - t, y + h - t, CLEAR)
    rect(img, x + w, y + h // 3, x + w + t * 2, y + h - h // 3, BODY)
    gap = t * 2
    inner = w - 2 * gap
    rect(img, x + gap, y + gap, x + gap + inner * 3 // 4, y + h - gap, CHARGE)


# The letters p, v and 3 on a 5x7 grid.
GLYPHS = {
    "p": ["....", "###.", "#..#", "#..#", "###.", "#...", "#..."],
    "v": ["....", "#..#", "#..#", "#..#", ".#.#", ".##.", "..#."],
    "3": ["###.", "...#", "...#", ".##.", "...#", "...#", "###."],
}


def text(img, x, y, word, scale, colour):
    for ch in word:
        for row, line in enumerate(GLYPHS[ch]):
            for col, cell in enumerate(line):
                if cell == "#":
                    rect(img, x + col * scale, y + row * scale,
                         x + (col + 1) * scale, y + (row + 1) * scale, colour)
        x += 5 * scale


def png(img, path):
    h, w = len(img), len(img[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    data = (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))
    path.write_bytes(data)


icon = canvas(128, 128)
battery(icon, 10, 34, 100, 60)
png(icon, OUT / "icon.png")

logo = canvas(250, 100)
battery(logo, 8, 25, 90, 50)
text(logo, 122, 22, "pv3", 8, INK)
png(logo, OUT / "logo.png")
print(f"wrote {OUT / 'icon.png'} and {OUT / 'logo.png'}")
