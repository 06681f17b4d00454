"""Reading a tape ZIP, which comes from a user's browser and is treated as hostile.

Pure: no subprocess, no network; it writes only into the folder it is given. Every entry is checked before
anything is read, the frames are streamed to that folder (never all into memory) with their inflated bytes
counted, each frame must start as a PNG of an acceptable size, and every refusal is a `TapeError`.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from acpipeline.core.tape_video.limits import KiB, MiB, TapeError, TapeLimits, human_size, shown_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
AUDIO_NAMES = ("soundtrack.wav", "soundtrack.mp3", "soundtrack.ogg", "soundtrack.flac")  # by preference
FRAME_PATTERN = "frame-%05d.png"  # the extracted frames, renumbered 0..n-1 (ffmpeg's image2 pattern)
_FRAME_NAME = re.compile(r"frame-(\d{1,9})\.png", re.IGNORECASE)
_CHUNK = MiB
# zipfile reads the whole central directory into memory at once: bound it before opening. Real entries
# take ~70 bytes there (46 + a short name); 1 KiB each leaves room for long names and extra fields.
_CENTRAL_DIRECTORY_BYTES_PER_ENTRY = KiB
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class Soundtrack:
    """The tape's audio as extracted, with the demuxer ffmpeg must read it with."""

    path: Path
    name: str
    format: str  # ffmpeg demuxer, forced: a guessed one could be a playlist that fetches URLs


@dataclass(frozen=True)
class ExtractedTape:
    """What `extract_tape` wrote: the frames as FRAME_PATTERN, and the soundtrack."""

    frames: int
    width: int  # of the first frame; ffmpeg scales any other size to it
    height: int
    names: tuple[str, ...]  # original names, in order, for messages
    timing: bytes | None
    soundtrack: Soundtrack | None


def frame_file(index: int) -> str:
    """The name of the extracted frame `index` (0-based, in the order ffmpeg's image2 pattern reads them)."""
    return FRAME_PATTERN % index


def tape_content_key(zip_path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the ZIP's bytes, read in chunks."""
    with open(zip_path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Budget:
    """Inflated bytes left for the whole tape."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TapeError(f"uncompressed size exceeds {human_size(self.limit)}")


def extract_tape(zip_path: Path, work: Path, limits: TapeLimits) -> ExtractedTape:
    """Check every entry, then stream the frames (renumbered 0..n-1), timing.json and the soundtrack."""
    _check_central_directory(zip_path, limits)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, ValueError, OverflowError):
        raise TapeError("not a zip file") from None
    except NotImplementedError as exc:  # e.g. a central directory asking for a newer zip version
        raise TapeError(f"zip file is unsupported ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise TapeError(f"zip has {len(infos)} entries, more than {limits.max_entries}")
        frames: dict[int, zipfile.ZipInfo] = {}
        named: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            parts = _entry_parts(info)
            # Folders and anything inside one (e.g. __MACOSX/) are not part of a tape, nor is an entry
            # without a name (whose is_dir() raises IndexError: the parts are checked first).
            if len(parts) != 1 or info.is_dir():
                continue
            name = parts[0]
            match = _FRAME_NAME.fullmatch(name)
            if match:
                number = int(match.group(1))
                if number in frames:
                    raise TapeError(f"zip has two frames numbered {number}")
                frames[number] = info
            elif name.lower() in ("timing.json", *AUDIO_NAMES):
                if name.lower() in named:
                    raise TapeError(f"zip has two entries named {name.lower()}")
                named[name.lower()] = info
        if not frames:
            raise TapeError("zip has no frames (frame-00000.png, ...)")
        ordered = [frames[n] for n in sorted(frames)]
        timing_info = named.get("timing.json")
        audio_info = next((named[n] for n in AUDIO_NAMES if n in named), None)
        wanted = [*ordered, *(i for i in (timing_info, audio_info) if i is not None)]
        for info in wanted:
            if info.flag_bits & 0x1:
                raise TapeError(f"zip entry {shown_name(info.filename)} is encrypted")
        for info in ordered:
            if info.file_size > limits.max_frame_bytes:
                raise TapeError(
                    f"{shown_name(info.filename, quote=False)} exceeds {human_size(limits.max_frame_bytes)}"
                )
        if timing_info is not None and timing_info.file_size > limits.max_json_bytes:
            raise TapeError(f"timing.json exceeds {human_size(limits.max_json_bytes)}")
        if sum(i.file_size for i in wanted) > limits.max_total_bytes:
            raise TapeError(f"uncompressed size exceeds {human_size(limits.max_total_bytes)}")

        budget = _Budget(limits.max_total_bytes)
        size: tuple[int, int] | None = None
        for index, info in enumerate(ordered):
            checked = _FrameCheck(info.filename, limits.max_frame_side)
            with open(work / frame_file(index), "wb") as out:
                _copy_entry(zf, info, out, limits.max_frame_bytes, budget, checked)
            size = size or checked.size
        timing = None
        if timing_info is not None:
            buffer = io.BytesIO()
            _copy_entry(zf, timing_info, buffer, limits.max_json_bytes, budget)
            timing = buffer.getvalue()
        soundtrack = None
        if audio_info is not None:
            sniffed = _AudioCheck(audio_info.filename)
            path = work / "soundtrack"
            with open(path, "wb") as out:
                _copy_entry(zf, audio_info, out, limits.max_total_bytes, budget, sniffed)
            assert sniffed.format is not None
            soundtrack = Soundtrack(path, audio_info.filename, sniffed.format)
    assert size is not None
    return ExtractedTape(
        frames=len(ordered),
        width=size[0],
        height=size[1],
        names=tuple(i.filename for i in ordered),
        timing=timing,
        soundtrack=soundtrack,
    )


def _check_central_directory(zip_path: Path, limits: TapeLimits) -> None:
    """Refuse a ZIP whose central directory is too large, finding it the way zipfile will."""
    with open(zip_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
        tail_start = max(0, file_size - (_EOCD.size + 0xFFFF))  # the record, then a comment of up to 64 KiB
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06", 0, max(0, len(tail) - _EOCD.size + 4))  # a whole record must follow
        if at < 0:
            raise TapeError("not a zip file")
        entries, directory_size = _EOCD.unpack_from(tail, at)[4:6]
        locator = at - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
            # zipfile assumes the zip64 record sits right before its locator.
            record_at = tail_start + locator - _ZIP64_EOCD.size
            if record_at >= 0:
                f.seek(record_at)
                record = f.read(_ZIP64_EOCD.size)
                if record[:4] == b"PK\x06\x06":
                    entries, directory_size = _ZIP64_EOCD.unpack(record)[7:9]
    if entries > limits.max_entries:
        raise TapeError(f"zip has {entries} entries, more than {limits.max_entries}")
    if directory_size > limits.max_entries * _CENTRAL_DIRECTORY_BYTES_PER_ENTRY:
        raise TapeError(f"zip central directory of {human_size(directory_size)} is too large")


def _entry_parts(info: zipfile.ZipInfo) -> list[str]:
    """The entry's path parts; refuses names that would land outside the folder, and symlinks."""
    name = info.filename
    unified = name.replace("\\", "/")  # Windows tools write backslashes; treat them as separators
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if unified.startswith("/") or re.match(r"[A-Za-z]:", unified) or ".." in parts:
        raise TapeError(f"zip entry {shown_name(name)} escapes the folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise TapeError(f"zip entry {shown_name(name)} is a symbolic link")
    return parts


_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, OSError)


def _copy_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    out: IO[bytes],
    cap: int,
    budget: _Budget,
    check_head: Callable[[bytes], None] | None = None,
) -> None:
    """Stream one entry into `out`, counting the bytes it really inflates to (headers may lie)."""
    shown = shown_name(info.filename)
    try:
        src = zf.open(info)
    except (*_READ_ERRORS, RuntimeError) as exc:  # RuntimeError: zipfile's way of saying "encrypted"
        raise TapeError(f"zip entry {shown} is unreadable ({exc})") from None
    total = 0
    with src:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except _READ_ERRORS as exc:
                raise TapeError(f"zip entry {shown} is unreadable ({exc})") from None
            if check_head is not None:
                check_head(chunk)
                check_head = None
            if not chunk:
                return
            total += len(chunk)
            if total > cap:
                raise TapeError(f"zip entry {shown} inflates beyond {human_size(cap)}")
            budget.take(len(chunk))
            out.write(chunk)


class _FrameCheck:
    """Refuses a frame whose first bytes are not a PNG signature and IHDR of an acceptable size."""

    def __init__(self, name: str, max_side: int) -> None:
        self.name = name
        self.max_side = max_side
        self.size: tuple[int, int] | None = None

    def __call__(self, head: bytes) -> None:
        shown = shown_name(self.name, quote=False)
        if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise TapeError(f"{shown} is not a PNG")
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise TapeError(f"{shown} has no pixels")
        if max(width, height) > self.max_side:
            raise TapeError(f"{shown} is {width}x{height}, larger than {self.max_side} a side")
        self.size = (width, height)


class _AudioCheck:
    """Picks the demuxer from the soundtrack's magic bytes; refuses anything else."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.format: str | None = None

    def __call__(self, head: bytes) -> None:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            self.format = "wav"
        elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
            self.format = "mp3"
        elif head[:4] == b"OggS":
            self.format = "ogg"
        elif head[:4] == b"fLaC":
            self.format = "flac"
        else:
            raise TapeError(f"{shown_name(self.name, quote=False)} is not WAV, MP3, Ogg or FLAC audio")
