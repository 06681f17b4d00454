"""The media files the documents point at, drawn from a random stream: pixel-art paintings, their
recordings, tape ZIPs as the platform exports them (with an optional soundtrack), and the PNG encoders."""

from __future__ import annotations

import array
import io
import json
import math
import random
import struct
import wave
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw

from acpipeline.demo.dataset.model import EPOCH_START

_PALETTE = [
    (0, 0, 0), (255, 255, 255), (255, 0, 77), (255, 163, 0), (255, 236, 39), (0, 228, 54),
    (41, 173, 255), (131, 118, 156), (255, 119, 168), (29, 43, 83), (126, 37, 83), (0, 135, 81),
    (171, 82, 54), (95, 87, 79), (194, 195, 199), (255, 241, 232),
]  # fmt: skip


def _png_bytes(img: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def make_painting(width: int, height: int, rng: random.Random, noisy: bool = False) -> Image.Image:
    """A pixel-art painting: a flat or transparent ground with pixel-aligned strokes and blocks (large
    canvases are often drawn at a lower resolution and enlarged, giving chunky pixels)."""
    chunk = rng.choice((1, 2, 4)) if min(width, height) >= 256 and not noisy else 1
    if chunk > 1:
        small = make_painting(max(1, width // chunk), max(1, height // chunk), rng)
        return small.resize((width, height), Image.Resampling.NEAREST)
    transparent = rng.random() < 0.2
    ground = (0, 0, 0, 0) if transparent else (*rng.choice(_PALETTE), 255)
    img = Image.new("RGBA", (width, height), ground)
    if noisy:  # camera-like noise over most of the canvas: a PNG that does not compress
        noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).convert("RGBA")
        img.paste(noise, (0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 24)):
        colour = (*rng.choice(_PALETTE), rng.choice((255, 255, 255, 160)))
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = rng.randrange(width), rng.randrange(height)
        kind = rng.random()
        if kind < 0.4:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, max(1, min(width, height) // 16)))
        elif kind < 0.7:
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=colour)
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=2)
    for _ in range(rng.randint(10, 60)):  # stray pixels
        img.putpixel((rng.randrange(width), rng.randrange(height)), (*rng.choice(_PALETTE), 255))
    return img


def _zip_info(name: str, when: datetime, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def build_recording_zip(
    path: Path, width: int, height: int, steps: int, rng: random.Random, when: datetime | None = None
) -> None:
    """A painting recording: `painting.json` (the steps) and one PNG per step, built up stroke by stroke."""
    when = when or EPOCH_START
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (width, height), (*rng.choice(_PALETTE), 255))
    draw = ImageDraw.Draw(img)
    records = []
    with zipfile.ZipFile(path, "w") as zf:
        for step in range(steps):
            colour = (*rng.choice(_PALETTE), 255)
            x0, y0, x1, y1 = (
                rng.randrange(width),
                rng.randrange(height),
                rng.randrange(width),
                rng.randrange(height),
            )
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, 3))
            name = f"{step}.png"
            zf.writestr(_zip_info(name, when, False), _png_bytes(img, 1))
            stamp = when + timedelta(seconds=step * 2)
            records.append(
                {
                    "step": step,
                    "label": rng.choice(("line", "rect", "smear", "oval")),
                    "timestamp": int(stamp.replace(tzinfo=UTC).timestamp() * 1000),
                    "gesture": [[x0, y0], [x1, y1]],
                }
            )
        zf.writestr(_zip_info("painting.json", when, True), json.dumps(records))


def _tape_frame_colour(i: int, base: int) -> tuple[int, int, int]:
    hue = (base + i * 5) % 360
    r, g, b = (int(127 + 100 * math.sin(math.radians(hue + k))) for k in (0, 120, 240))
    return r, g, (b + i) % 256  # `+ i` keeps consecutive frames different even if the sine repeats


def build_tape_zip(
    path: Path,
    width: int,
    height: int,
    frames: int,
    fps: int = 30,
    soundtrack: bool = False,
    rng: random.Random | None = None,
    exported_at: datetime | None = None,
) -> None:
    """A tape ZIP as the platform exports it: `frame-%05d.png` frames (every one different), `timing.json`,
    `metadata.json` and optionally `soundtrack.wav` (a sine lasting frames/fps seconds)."""
    rng = rng or random.Random(0)
    exported_at = exported_at or EPOCH_START
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = 1000 / fps
    base_hue = rng.randrange(360)
    size = max(4, min(width, height) // rng.randint(4, 8))
    x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
    speed = rng.uniform(1.5, 4.0)
    angle = rng.uniform(0, 2 * math.pi)
    dx, dy = speed * math.cos(angle), speed * math.sin(angle)
    if abs(dx) < 1:
        dx = math.copysign(1.0, dx or 1.0)
    # A static pixel-art layer over the changing ground, so frames look like a canvas, not a test card.
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(layer)
    for _ in range(rng.randint(3, 8)):
        colour = (*rng.choice(_PALETTE), 255)
        ldraw.line(
            (rng.randrange(width), rng.randrange(height), rng.randrange(width), rng.randrange(height)),
            fill=colour,
            width=rng.randint(1, 3),
        )
    shape_colour = rng.choice(_PALETTE)
    timing = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(frames):
            img = Image.new("RGB", (width, height), _tape_frame_colour(i, base_hue))
            img.paste(layer, (0, 0), layer)
            draw = ImageDraw.Draw(img)
            x, y = x + dx, y + dy
            if not 0 <= x <= width - size:
                dx, x = -dx, min(max(x, 0), width - size)
            if not 0 <= y <= height - size:
                dy, y = -dy, min(max(y, 0), height - size)
            fill = tuple((c + 7 * i) % 256 for c in shape_colour)
            draw.ellipse((int(x), int(y), int(x) + size, int(y) + size), fill=fill)
            draw.point((i % width, (i // width) % height), fill=(255, 255, 255))  # a cursor that always moves
            name = f"frame-{i:05d}.png"
            zf.writestr(_zip_info(name, exported_at, False), _png_bytes(img, 1))
            timing.append(
                {"frame": i, "filename": name, "duration": duration, "timestamp": round(i * duration, 3)}
            )
        zf.writestr(_zip_info("timing.json", exported_at, True), json.dumps(timing))
        metadata = {
            "originalSize": {"width": width, "height": height},
            "scaledSize": {"width": width, "height": height},
            "scale": 1,
            "frameCount": frames,
            "totalDuration": round(frames * duration, 3),
            "exportedAt": exported_at.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{exported_at.microsecond // 1000:03d}Z",
        }
        zf.writestr(_zip_info("metadata.json", exported_at, True), json.dumps(metadata))
        if soundtrack:
            zf.writestr(
                _zip_info("soundtrack.wav", exported_at, True),
                sine_wav(frames / fps, rng.choice((220.0, 261.63, 329.63, 440.0))),
            )


def sine_wav(seconds: float, freq: float, rate: int = 22050) -> bytes:
    """A mono 16-bit WAV holding a sine of `freq` Hz for `seconds`."""
    count = round(seconds * rate)
    step = 2 * math.pi * freq / rate
    samples = array.array("h", (int(12000 * math.sin(step * n)) for n in range(count)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buf.getvalue()


def write_png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(img))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def quick_png(img: Image.Image) -> bytes:
    """An 8-bit RGBA PNG without row filters, deflated at level 1: twice as fast to write as Pillow's
    encoder (which tries every filter on every row); pixel art still compresses well (a 1024x768 painting
    20-60 KB instead of about 10 KB). The platform-size dataset writes about 9,000 of them."""
    img = img.convert("RGBA")
    width, height = img.size
    raw = img.tobytes()
    stride = width * 4
    rows = b"".join(b"\x00" + raw[i : i + stride] for i in range(0, len(raw), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA, deflate, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 1))
        + _png_chunk(b"IEND", b"")
    )
