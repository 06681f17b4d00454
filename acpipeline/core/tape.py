"""Turn an Aesthetic Computer tape ZIP into an MP4 video blob and a JPEG poster frame.

Pure core: no Dagster, no network. The ZIP comes from a user's browser, so it is treated as hostile:
entries are checked before anything is read, frames are streamed to a temporary folder (never all
into memory) with their inflated bytes counted, and every refusal is a `TapeError` with one line.

The encode follows the platform's converter (`tape-to-mp4.mjs`): frames at a constant frame rate,
3x nearest-neighbour, even dimensions, H.264 (libx264) in yuv420p, AAC 128k when there is a
soundtrack, `+faststart`. When the result is larger than the caller's limit it is re-encoded with a
higher CRF, then at a smaller scale, until it fits.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import os
import re
import stat
import struct
import subprocess
import tempfile
import time
import wave
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

VIDEO_MIME = "video/mp4"
THUMBNAIL_MIME = "image/jpeg"
THUMBNAIL_BOX = 512
THUMBNAIL_QUALITY = 90

DEFAULT_FPS = 60  # the platform's fallback when timing.json is missing or unusable
MIN_FPS = 1
MAX_FPS = 120
UPSCALE = 3  # the platform's 3x nearest-neighbour enlargement
CRF_STEPS = (23, 28, 33, 38)  # tried in order at the largest scale; smaller scales use the last one
# superfast plus veryfast's macroblock-tree lookahead: measured ~1.2-2x faster than veryfast on 3x pixel
# art (320x240 frames -> 960x720) for ~10-25% larger files; plain superfast makes them ~60-75% larger.
PRESET = "superfast"
X264_PARAMS = "mbtree=1:rc-lookahead=10"
AUDIO_BITRATE = "128k"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
AUDIO_NAMES = ("soundtrack.wav", "soundtrack.mp3", "soundtrack.ogg", "soundtrack.flac")  # by preference
_FRAME_NAME = re.compile(r"frame-(\d{1,9})\.png", re.IGNORECASE)
_CHUNK = MiB
# zipfile reads the whole central directory into memory at once: bound it before opening. Real entries
# take ~70 bytes there (46 + a short name); 1 KiB each leaves room for long names and extra fields.
_CENTRAL_DIRECTORY_BYTES_PER_ENTRY = KiB
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


class TapeError(ValueError):
    """A tape that cannot become a video; `reason` is one line for a human."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.splitlines()).strip()
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TapeLimits:
    """Bounds on what an untrusted tape ZIP may make us read, write and run."""

    max_entries: int = 20_000
    max_total_bytes: int = 2 * GiB  # inflated bytes of the entries we extract, counted while streaming
    max_frame_bytes: int = 50 * MiB
    max_json_bytes: int = 8 * MiB  # timing.json
    max_frame_side: int = 4096  # from each PNG's IHDR, before anything decodes it
    max_output_side: int = 4096  # a larger 3x video starts at a smaller scale instead
    max_encode_s: float = 1800.0  # per ffmpeg run


@dataclass(frozen=True)
class EncodedTape:
    """The MP4 (width x height, `scale` times the frames, encoded at `crf`) and its JPEG poster frame.

    `duration_s` is frames / fps, or with a soundtrack the shorter of that and the audio (`-shortest`).
    `encode_s` is the wall time of all ffmpeg encodes, including the ones that did not fit.
    """

    mp4: bytes = field(repr=False)
    thumbnail_jpeg: bytes = field(repr=False)
    width: int
    height: int
    frames: int
    fps: int
    duration_s: float
    has_audio: bool
    encode_s: float
    crf: int
    scale: int


@dataclass(frozen=True)
class _Soundtrack:
    path: Path
    name: str
    format: str  # ffmpeg demuxer, forced: a guessed one could be a playlist that fetches URLs


@dataclass(frozen=True)
class _Extracted:
    frames: int
    width: int  # of the first frame; ffmpeg scales any other size to it
    height: int
    names: tuple[str, ...]  # original names, in order, for messages
    timing: bytes | None
    soundtrack: _Soundtrack | None


def tape_content_key(zip_path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the ZIP's bytes, read in chunks."""
    with open(zip_path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def encode_tape(
    zip_path: str | os.PathLike[str],
    max_bytes: int,
    limits: TapeLimits = TapeLimits(),
    threads: int | None = None,
) -> EncodedTape:
    """Encode the tape at `zip_path` into an MP4 of at most `max_bytes` and a poster frame.

    `threads` bounds ffmpeg's threads (decoder, filters, x264) so several encodes can share the cores;
    None lets ffmpeg pick. Raises TapeError when the tape is refused or cannot fit.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, not {max_bytes}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as tmp:
        work = Path(tmp)
        tape = _extract(Path(zip_path), work, limits)
        if tape.soundtrack is None:
            fps = timing_fps(tape.timing)
            duration_s = tape.frames / fps
        else:
            audio_s = _audio_duration(tape.soundtrack, limits)
            fps = _clamp_fps(tape.frames / audio_s)
            duration_s = min(audio_s, tape.frames / fps)
        middle = tape.frames // 2
        thumbnail = _thumbnail(work / _frame_file(middle), tape.names[middle])
        attempts = _attempts(tape.width, tape.height, limits.max_output_side)
        if not attempts:
            raise TapeError(f"frames of {tape.width}x{tape.height} cannot be made into a video")
        encode_s = 0.0
        smallest: tuple[int, int, int] | None = None
        for scale, crf in attempts:
            out = work / f"tape-{scale}x-crf{crf}.mp4"
            started = time.monotonic()
            _run_ffmpeg(_encode_args(work, tape, fps, scale, crf, threads, out), limits.max_encode_s)
            encode_s += time.monotonic() - started
            size = out.stat().st_size
            if size <= max_bytes:
                width, height = _even_dims(tape.width, tape.height, scale)
                return EncodedTape(
                    mp4=out.read_bytes(),
                    thumbnail_jpeg=thumbnail,
                    width=width,
                    height=height,
                    frames=tape.frames,
                    fps=fps,
                    duration_s=duration_s,
                    has_audio=tape.soundtrack is not None,
                    encode_s=encode_s,
                    crf=crf,
                    scale=scale,
                )
            out.unlink()
            if smallest is None or size < smallest[0]:
                smallest = (size, scale, crf)
        assert smallest is not None
        size, scale, crf = smallest
        raise TapeError(
            f"tape cannot fit in {max_bytes} bytes: the smallest encode was {size} bytes"
            f" ({scale}x, crf {crf})"
        )


# ---------------------------------------------------------------------------------------------- ZIP


class _Budget:
    """Inflated bytes left for the whole tape."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TapeError(f"uncompressed size exceeds {_human(self.limit)}")


def _extract(zip_path: Path, work: Path, limits: TapeLimits) -> _Extracted:
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
                raise TapeError(f"zip entry {_show(info.filename)} is encrypted")
        for info in ordered:
            if info.file_size > limits.max_frame_bytes:
                raise TapeError(
                    f"{_show(info.filename, quote=False)} exceeds {_human(limits.max_frame_bytes)}"
                )
        if timing_info is not None and timing_info.file_size > limits.max_json_bytes:
            raise TapeError(f"timing.json exceeds {_human(limits.max_json_bytes)}")
        if sum(i.file_size for i in wanted) > limits.max_total_bytes:
            raise TapeError(f"uncompressed size exceeds {_human(limits.max_total_bytes)}")

        budget = _Budget(limits.max_total_bytes)
        size: tuple[int, int] | None = None
        for index, info in enumerate(ordered):
            checked = _FrameCheck(info.filename, limits.max_frame_side)
            with open(work / _frame_file(index), "wb") as out:
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
            soundtrack = _Soundtrack(path, audio_info.filename, sniffed.format)
    assert size is not None
    return _Extracted(
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
        raise TapeError(f"zip central directory of {_human(directory_size)} is too large")


def _entry_parts(info: zipfile.ZipInfo) -> list[str]:
    """The entry's path parts; refuses names that would land outside the folder, and symlinks."""
    name = info.filename
    unified = name.replace("\\", "/")  # Windows tools write backslashes; treat them as separators
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if unified.startswith("/") or re.match(r"[A-Za-z]:", unified) or ".." in parts:
        raise TapeError(f"zip entry {_show(name)} escapes the folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise TapeError(f"zip entry {_show(name)} is a symbolic link")
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
    shown = _show(info.filename)
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
                raise TapeError(f"zip entry {shown} inflates beyond {_human(cap)}")
            budget.take(len(chunk))
            out.write(chunk)


class _FrameCheck:
    """Refuses a frame whose first bytes are not a PNG signature and IHDR of an acceptable size."""

    def __init__(self, name: str, max_side: int) -> None:
        self.name = name
        self.max_side = max_side
        self.size: tuple[int, int] | None = None

    def __call__(self, head: bytes) -> None:
        if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise TapeError(f"{_show(self.name, quote=False)} is not a PNG")
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise TapeError(f"{_show(self.name, quote=False)} has no pixels")
        if max(width, height) > self.max_side:
            raise TapeError(
                f"{_show(self.name, quote=False)} is {width}x{height}, larger than {self.max_side} a side"
            )
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
            raise TapeError(f"{_show(self.name, quote=False)} is not WAV, MP3, Ogg or FLAC audio")


# ------------------------------------------------------------------------------------------ timing


def _clamp_fps(fps: float) -> int:
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
    return _clamp_fps(1000 / mean) if mean > 0 and math.isfinite(mean) else DEFAULT_FPS


def _audio_duration(soundtrack: _Soundtrack, limits: TapeLimits) -> float:
    """Seconds of audio: from the WAV header when it is plain PCM and agrees with the file's size,
    else by decoding it with ffmpeg (exact, and there is no ffprobe)."""
    if soundtrack.format == "wav":
        try:
            with wave.open(str(soundtrack.path), "rb") as w:
                rate, count = w.getframerate(), w.getnframes()
                frame_bytes = w.getsampwidth() * w.getnchannels()
            if rate > 0 and 0 < count * frame_bytes <= soundtrack.path.stat().st_size:
                return count / rate
        except (wave.Error, EOFError, struct.error, ValueError):
            pass  # e.g. float or WAVE_FORMAT_EXTENSIBLE samples, which ffmpeg reads fine
    args = [
        *_input(soundtrack.format, soundtrack.path),
        *("-map", "0:a:0", "-f", "null", "-", "-progress", "pipe:1", "-nostats"),
    ]
    progress = _run_ffmpeg(args, limits.max_encode_s).stdout.decode("ascii", "replace")
    stamps = re.findall(r"^out_time_us=(\d+)$", progress, re.MULTILINE)
    seconds = int(stamps[-1]) / 1e6 if stamps else 0.0
    if seconds <= 0:
        raise TapeError(f"{_show(soundtrack.name, quote=False)} has no audio")
    return seconds


# ------------------------------------------------------------------------------------------ ffmpeg


def ffmpeg_exe() -> str:
    """FFMPEG_BINARY when set, else the binary imageio-ffmpeg ships."""
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        return configured
    import imageio_ffmpeg  # imported late: only needed without FFMPEG_BINARY

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _run_ffmpeg(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg quietly (errors only); a failure becomes TapeError with stderr's last line."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise TapeError(f"ffmpeg took longer than {timeout_s:g} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        last = lines[-1][:300] if lines else f"exit status {done.returncode}"
        raise TapeError(f"ffmpeg failed: {last}")
    return done


def _input(demuxer: str, path: Path) -> list[str]:
    """A local-file-only input with a forced demuxer: ffmpeg never probes content into a network reader."""
    return ["-protocol_whitelist", "file", "-f", demuxer, "-i", str(path)]


def _even_dims(width: int, height: int, scale: int) -> tuple[int, int]:
    return width * scale // 2 * 2, height * scale // 2 * 2


def _attempts(width: int, height: int, max_side: int) -> list[tuple[int, int]]:
    """(scale, crf) pairs to try in order: every CRF step at the largest usable scale, then the
    highest CRF at each smaller one."""
    scales = []
    for scale in range(UPSCALE, 0, -1):
        w, h = _even_dims(width, height, scale)
        if min(w, h) >= 2 and max(w, h) <= max_side:
            scales.append(scale)
    if not scales:
        return []
    first, *rest = scales
    return [(first, crf) for crf in CRF_STEPS] + [(scale, CRF_STEPS[-1]) for scale in rest]


def _frame_file(index: int) -> str:
    return f"frame-{index:05d}.png"


def _encode_args(
    work: Path, tape: _Extracted, fps: int, scale: int, crf: int, threads: int | None, out: Path
) -> list[str]:
    """The platform's command, with the scale to even dimensions done in one nearest-neighbour pass
    (same size as its `scale=iw*3:ih*3,scale=trunc(iw/2)*2:trunc(ih/2)*2`, ~5x cheaper)."""
    width, height = _even_dims(tape.width, tape.height, scale)
    limit = [] if threads is None else ["-threads", str(threads)]
    pattern = str(work).replace("%", "%%") + "/frame-%05d.png"  # a literal % in the folder must not count
    args = [*limit, "-start_number", "0", "-r", str(fps), *_input("image2", Path(pattern))]
    if tape.soundtrack is not None:
        args += _input(tape.soundtrack.format, tape.soundtrack.path)
    args += ["-map", "0:v:0"]
    if tape.soundtrack is not None:
        args += ["-map", "1:a:0"]
    if threads is not None:
        args += ["-filter_threads", str(threads)]
    args += ["-vf", f"scale={width}:{height}:flags=neighbor"]
    args += ["-c:v", "libx264", "-preset", PRESET, "-x264-params", X264_PARAMS]
    args += ["-crf", str(crf), "-pix_fmt", "yuv420p", *limit]
    if tape.soundtrack is not None:
        args += ["-c:a", "aac", "-b:a", AUDIO_BITRATE, "-shortest"]
    return [*args, "-movflags", "+faststart", "-y", str(out)]


# ------------------------------------------------------------------------------ MP4s made elsewhere


def check_decodes(mp4: Path, limits: TapeLimits = TapeLimits()) -> None:
    """Decode the MP4's video stream to the end, failing on the first error: an MP4 whose boxes look right
    (core/mp4.py) but whose stream is damaged is not used as it is."""
    args = ["-threads", "1", "-xerror", "-err_detect", "explode", *_input("mp4", mp4)]
    _run_ffmpeg([*args, "-map", "0:v:0", "-f", "null", "-"], limits.max_encode_s)


def remux_faststart(src: Path, out: Path, limits: TapeLimits = TapeLimits()) -> None:
    """The same streams, copied, with `moov` moved before `mdat`."""
    args = [*_input("mp4", src), "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy"]
    _run_ffmpeg([*args, "-movflags", "+faststart", "-y", str(out)], limits.max_encode_s)


def transcode_mp4(
    src: Path, max_bytes: int, limits: TapeLimits = TapeLimits(), threads: int | None = None
) -> bytes:
    """Any video ffmpeg reads from an MP4 container, as the platform's H.264/yuv420p (AAC) with faststart,
    at most `limits.max_output_side` a side, re-encoded at higher CRFs until it fits `max_bytes`."""
    side = limits.max_output_side
    scale = (
        f"scale=w='min(iw,{side})':h='min(ih,{side})':force_original_aspect_ratio=decrease"
        ":force_divisible_by=2:flags=neighbor"
    )
    limit = [] if threads is None else ["-threads", str(threads)]
    smallest = None
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as tmp:
        for crf in CRF_STEPS:
            out = Path(tmp) / f"crf{crf}.mp4"
            args = [*limit, *_input("mp4", src), "-map", "0:v:0", "-map", "0:a:0?", "-vf", scale]
            args += ["-c:v", "libx264", "-preset", PRESET, "-x264-params", X264_PARAMS, "-crf", str(crf)]
            args += ["-pix_fmt", "yuv420p", *limit, "-c:a", "aac", "-b:a", AUDIO_BITRATE]
            _run_ffmpeg([*args, "-movflags", "+faststart", "-y", str(out)], limits.max_encode_s)
            size = out.stat().st_size
            if size <= max_bytes:
                return out.read_bytes()
            smallest = min(size, smallest or size)
    raise TapeError(f"video cannot fit in {max_bytes} bytes: the smallest encode was {smallest} bytes")


def zip_thumbnail(zip_path: str | os.PathLike[str], limits: TapeLimits = TapeLimits()) -> bytes:
    """The poster frame `encode_tape` makes, without the encode: for a tape whose video is made elsewhere."""
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as tmp:
        work = Path(tmp)
        tape = _extract(Path(zip_path), work, limits)
        middle = tape.frames // 2
        return _thumbnail(work / _frame_file(middle), tape.names[middle])


# --------------------------------------------------------------------------------------- thumbnail


def _thumbnail(frame: Path, name: str) -> bytes:
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
        raise TapeError(f"{_show(name, quote=False)} cannot be decoded ({exc})") from None
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


# ------------------------------------------------------------------------------------------- words


def _human(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _show(name: str, quote: bool = True) -> str:
    """A zip entry name fit for a one-line message: escaped, shortened."""
    shown = repr(name) if quote else repr(name)[1:-1]
    return shown if len(shown) <= 80 else shown[:77] + "..."


__all__ = [
    "EncodedTape",
    "TapeError",
    "TapeLimits",
    "THUMBNAIL_MIME",
    "VIDEO_MIME",
    "check_decodes",
    "encode_tape",
    "ffmpeg_exe",
    "remux_faststart",
    "tape_content_key",
    "timing_fps",
    "transcode_mp4",
    "zip_thumbnail",
]
