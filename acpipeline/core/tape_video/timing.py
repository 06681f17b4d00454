"""A tape's frame rate, as the platform finds it: from timing.json, or from the soundtrack's length.

Pure: no subprocess, no network. A soundtrack whose length its header does not tell is measured by
decoding it, which `encode.audio_seconds` does with ffmpeg.
"""

from __future__ import annotations

import json
import math
import struct
import wave
from pathlib import Path

DEFAULT_FPS = 60  # the platform's fallback when timing.json is missing or unusable
MIN_FPS = 1
MAX_FPS = 120


def clamp_fps(fps: float) -> int:
    """Round half up, as the platform's Math.round does, into MIN_FPS..MAX_FPS."""
    return int(min(MAX_FPS, max(MIN_FPS, math.floor(fps + 0.5))))


def timing_fps(raw: bytes | None) -> int:
    """fps = round(1000 / mean duration in ms) from timing.json (an array, or {"frames": [...]});
    DEFAULT_FPS when it is missing, unparsable or has no usable duration."""
    if raw is None:
        return DEFAULT_FPS
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return DEFAULT_FPS
    entries = doc.get("frames") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        return DEFAULT_FPS
    durations = []
    for entry in entries:
        duration = entry.get("duration") if isinstance(entry, dict) else None
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            try:
                duration = float(duration)
            except OverflowError:
                continue
            if math.isfinite(duration) and duration > 0:
                durations.append(duration)
    if not durations:
        return DEFAULT_FPS
    mean = math.fsum(durations) / len(durations)
    return clamp_fps(1000 / mean) if mean > 0 and math.isfinite(mean) else DEFAULT_FPS


def wav_seconds(path: Path) -> float | None:
    """Seconds of audio from a WAV header, when it is plain PCM and agrees with the file's size; else None
    (e.g. float or WAVE_FORMAT_EXTENSIBLE samples, which ffmpeg reads fine)."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, count = w.getframerate(), w.getnframes()
            frame_bytes = w.getsampwidth() * w.getnchannels()
    except (wave.Error, EOFError, struct.error, ValueError):
        return None
    if rate > 0 and 0 < count * frame_bytes <= path.stat().st_size:
        return count / rate
    return None
