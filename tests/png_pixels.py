"""A minimal PNG reader (8-bit RGB/RGBA, not interlaced): enough to check a screenshot's colours."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def read_png(path: Path, max_rows: int | None = None) -> tuple[int, int, int, list[bytes]]:
    """(width, height, channels, rows) of an 8-bit RGB or RGBA PNG (the first ``max_rows``)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat = 8, b""
    width = height = channels = 0
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    position = 0
    for _ in range(min(height, max_rows if max_rows is not None else height)):
        kind = raw[position]
        line = bytearray(raw[position + 1:position + 1 + stride])
        position += 1 + stride
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def count_near(path: Path, color: str, top: int, tolerance: int = 12) -> int:
    """How many pixels of the first ``top`` rows are within ``tolerance`` of ``#rrggbb``."""
    width, _, channels, rows = read_png(path, top)
    want = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    count = 0
    for row in rows[:top]:
        for x in range(0, width * channels, channels):
            if all(abs(row[x + c] - want[c]) <= tolerance for c in range(3)):
                count += 1
    return count
