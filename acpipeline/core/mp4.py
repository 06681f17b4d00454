"""Checks on media the platform made before they become blobs as they are: an MP4 (the oven's bake of a
tape, an ac-native recording) and a JPEG (the oven's poster frame).

Pure core: bytes in, facts or a `TapeError` with one line out. The MP4 is read as ISO-BMFF boxes (ISO/IEC
14496-12): the top level must be `ftyp` first, boxes that tile the file exactly, and `moov` before the
first `mdat` (faststart, so a player can start before the whole file arrived); inside `moov`, the video
track's sample entry names its codec (`avc1`/`avc3`: H.264). Whether the stream really decodes is ffmpeg's
question (`core/tape_video/encode.py` `check_decodes`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image

from acpipeline.core.tape_video.limits import TapeError

H264_ENTRIES = frozenset({"avc1", "avc3"})
MAX_BOXES = 4096  # per level: a real MP4 has a handful; a file of tiny boxes is not worth walking
MAX_JPEG_SIDE = 4096
_PATH_TO_STSD = ("mdia", "minf", "stbl", "stsd")


@dataclass(frozen=True)
class Box:
    """One ISO-BMFF box: its four-character type and its byte offsets in the whole file."""

    kind: str
    start: int  # of the header
    body: int  # where the payload starts
    end: int


@dataclass(frozen=True)
class Mp4Facts:
    """What an MP4's boxes say without decoding it: its top-level boxes in order, whether it is faststart, and
    each video and audio track's codec."""

    top_level: tuple[str, ...]
    faststart: bool  # `moov` before the first `mdat`
    video_codecs: tuple[str, ...]  # sample entry of each video track (`avc1`, `hev1`, ...)
    audio_codecs: tuple[str, ...]


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """The boxes tiling data[start:end]; raises TapeError when their sizes do not add up."""
    end = len(data) if end is None else end
    found: list[Box] = []
    at = start
    while at < end:
        if len(found) >= MAX_BOXES:
            raise TapeError(f"MP4 has more than {MAX_BOXES} boxes in one level")
        if end - at < 8:
            raise TapeError(f"MP4 ends inside a box header at byte {at}")
        size, raw_kind = struct.unpack_from(">I4s", data, at)
        body = at + 8
        if size == 1:
            if end - at < 16:
                raise TapeError(f"MP4 ends inside a box header at byte {at}")
            (size,) = struct.unpack_from(">Q", data, at + 8)
            body = at + 16
        elif size == 0:  # to the end of the enclosing range
            size = end - at
        if size < body - at or at + size > end:
            raise TapeError(f"MP4 box {_kind(raw_kind)!r} at byte {at} has a bad size ({size})")
        found.append(Box(_kind(raw_kind), at, body, at + size))
        at += size
    return found


def mp4_facts(data: bytes) -> Mp4Facts:
    """What the MP4's boxes say; raises TapeError when it is no MP4 or its boxes are broken."""
    top = boxes(data)
    kinds = tuple(b.kind for b in top)
    if not kinds or kinds[0] != "ftyp":
        raise TapeError("not an MP4 (no ftyp box first)")
    moovs = [b for b in top if b.kind == "moov"]
    if len(moovs) != 1:
        raise TapeError(f"MP4 has {len(moovs)} moov boxes, not one")
    if "mdat" not in kinds:
        raise TapeError("MP4 has no mdat box")
    moov = moovs[0]
    video: list[str] = []
    audio: list[str] = []
    for trak in (b for b in boxes(data, moov.body, moov.end) if b.kind == "trak"):
        handler, entry = _track(data, trak)
        if handler == "vide":
            video.append(entry)
        elif handler == "soun":
            audio.append(entry)
    return Mp4Facts(
        top_level=kinds,
        faststart=kinds.index("moov") < kinds.index("mdat"),
        video_codecs=tuple(video),
        audio_codecs=tuple(audio),
    )


def check_mp4(data: bytes, max_bytes: int) -> Mp4Facts:
    """The MP4 as a blob as it is: at most `max_bytes`, faststart, one H.264 video track. Raises TapeError
    naming the first thing wrong."""
    if len(data) > max_bytes:
        raise TapeError(f"MP4 of {len(data)} bytes is larger than {max_bytes}")
    facts = mp4_facts(data)
    if not facts.faststart:
        raise TapeError("MP4 has its moov after mdat (not faststart)")
    if len(facts.video_codecs) != 1:
        raise TapeError(f"MP4 has {len(facts.video_codecs)} video tracks, not one")
    if facts.video_codecs[0] not in H264_ENTRIES:
        raise TapeError(f"MP4 video is {facts.video_codecs[0]!r}, not H.264")
    return facts


def check_jpeg(data: bytes, max_bytes: int) -> tuple[int, int]:
    """A JPEG fit to be a blob as it is: at most `max_bytes`, decodable, at most MAX_JPEG_SIDE a side.
    Returns its size; raises TapeError."""
    if len(data) > max_bytes:
        raise TapeError(f"JPEG of {len(data)} bytes is larger than {max_bytes}")
    if data[:3] != b"\xff\xd8\xff":
        raise TapeError("not a JPEG")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height = image.size
            if max(width, height) <= MAX_JPEG_SIDE:
                image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise TapeError(f"JPEG cannot be decoded ({exc})") from None
    if max(width, height) > MAX_JPEG_SIDE:
        raise TapeError(f"JPEG is {width}x{height}, larger than {MAX_JPEG_SIDE} a side")
    return width, height


def _track(data: bytes, trak: Box) -> tuple[str, str]:
    """(handler type, first sample entry) of a `trak`; empty strings for what it lacks."""
    handler = entry = ""
    mdia = _child(data, trak, "mdia")
    if mdia is not None:
        hdlr = _child(data, mdia, "hdlr")
        if hdlr is not None and hdlr.end - hdlr.body >= 12:  # version/flags, pre_defined, handler_type
            handler = _kind(data[hdlr.body + 8 : hdlr.body + 12])
    box: Box | None = trak
    for kind in _PATH_TO_STSD:
        box = _child(data, box, kind) if box is not None else None
    if box is not None and box.end - box.body >= 16:  # version/flags, entry_count, then the first entry
        entry = _kind(data[box.body + 12 : box.body + 16])
    return handler, entry


def _child(data: bytes, parent: Box, kind: str) -> Box | None:
    return next((b for b in boxes(data, parent.body, parent.end) if b.kind == kind), None)


def _kind(raw: bytes) -> str:
    return raw.decode("latin-1")
