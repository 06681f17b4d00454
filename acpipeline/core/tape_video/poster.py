"""A tape's poster frame: its middle frame, 3x nearest-neighbour, fitted into 512x512, as JPEG q90.

Pure: no subprocess, no network (Pillow decodes the one frame).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

from PIL import Image

from acpipeline.core.tape_video.limits import DEFAULT_LIMITS, UPSCALE, TapeError, TapeLimits, shown_name
from acpipeline.core.tape_video.zip_reading import ExtractedTape, extract_tape, frame_file

THUMBNAIL_MIME = "image/jpeg"
THUMBNAIL_BOX = 512
THUMBNAIL_QUALITY = 90


def zip_thumbnail(zip_path: str | os.PathLike[str], limits: TapeLimits = DEFAULT_LIMITS) -> bytes:
    """The poster frame `encode_tape` makes, without the encode: for a tape whose video is made elsewhere."""
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as tmp:
        work = Path(tmp)
        return middle_frame_poster(work, extract_tape(Path(zip_path), work, limits))


def middle_frame_poster(work: Path, tape: ExtractedTape) -> bytes:
    """The poster frame of a tape extracted into `work`."""
    middle = tape.frames // 2
    return poster_jpeg(work / frame_file(middle), tape.names[middle])


def poster_jpeg(frame: Path, name: str) -> bytes:
    """The frame 3x nearest-neighbour, fitted (aspect kept, never padded) into 512x512, as JPEG q90.

    Shrinking past 3x is done from the smallest whole enlargement that still covers the target, so a
    large frame is never blown up 3x in memory only to be shrunk again.
    """
    try:
        # From memory, not the file (the frame is within `max_frame_bytes`): a file's reads allocate what a
        # chunk header claims up front, and Pillow skips a lying IDAT length with one read (2 GiB).
        with Image.open(io.BytesIO(frame.read_bytes())) as image:
            image.load()
            rgb = image.convert("RGBA").convert("RGB") if image.mode != "RGB" else image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise TapeError(f"{shown_name(name, quote=False)} cannot be decoded ({exc})") from None
    width, height = rgb.size
    fit = min(1.0, THUMBNAIL_BOX / (width * UPSCALE), THUMBNAIL_BOX / (height * UPSCALE))
    target = (max(1, round(width * UPSCALE * fit)), max(1, round(height * UPSCALE * fit)))
    whole = min(UPSCALE, max(math.ceil(target[0] / width), math.ceil(target[1] / height)))
    if whole > 1:
        rgb = rgb.resize((width * whole, height * whole), Image.Resampling.NEAREST)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()
