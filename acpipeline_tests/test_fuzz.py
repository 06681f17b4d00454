"""Fuzzed bytes for the decoders of untrusted media: the tape ZIP (core/tape_video/), the painting PNG and its
thumbnail (core/thumbnail.py), the platform's MP4s and poster JPEGs (core/mp4.py), and ffmpeg's reading of
them. Real inputs (a tape ZIP as the platform exports it, a PNG from Pillow, an MP4 from ffmpeg) are
mutated and truncated, byte by byte or structure-aware (valid CRCs, so the damage reaches the decoders).

Every input ends in the module's failure (`TapeError`, `ImageProblem`: what the blob stage turns into a
failed item) or in a sound result, never in another exception, within a time and memory budget.
How many inputs: `property_settings.examples` (`ACPIPELINE_PROPERTY_EXAMPLES=N` for a longer run)."""

from __future__ import annotations

import io
import json
import re
import resource
import struct
import subprocess
import tempfile
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from acpipeline.core.mp4 import check_jpeg, check_mp4, mp4_facts
from acpipeline.core.tape_video.encode import check_decodes, encode_tape, ffmpeg_exe
from acpipeline.core.tape_video.limits import TapeError
from acpipeline.core.tape_video.poster import zip_thumbnail
from acpipeline.core.thumbnail import ImageProblem, painting_thumbnail
from acpipeline.demo.dataset import build_tape_zip

from .property_settings import examples

MB = 1 << 20
PURE_SECONDS = 10.0  # per input, without ffmpeg (a loaded CI machine included)
FFMPEG_SECONDS = 60.0  # per input that runs ffmpeg
PYTHON_HEAP_BYTES = 64 * MB  # Python allocations per input (zipfile, bytes), traced
PROCESS_GROWTH_KB = 768 * 1024  # growth of this process's peak RSS in one input (Pillow, zlib: untraced)
CHILD_PEAK_KB = 1024 * 1024  # peak RSS of an ffmpeg run
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="acpipeline-fuzz-") as name:
        yield Path(name)


@cache
def tape_zip(soundtrack: bool = False) -> bytes:
    """A tape ZIP as the platform exports it: stored PNG frames, deflated JSON, optionally a WAV."""
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "tape.zip"
        build_tape_zip(path, 12, 8, 3, fps=30, soundtrack=soundtrack)
        return path.read_bytes()


@cache
def painting_png() -> bytes:
    """A small pixel-art painting with transparency, as a PNG from Pillow."""
    image = Image.new("RGBA", (24, 16), (255, 0, 77, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((3, 3, 10, 12), fill=(0, 228, 54, 200))
    draw.point((0, 0), fill=(0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@cache
def poster_jpeg() -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(painting_png())).convert("RGB").resize((48, 32)).save(
        out, format="JPEG", quality=90
    )
    return out.getvalue()


@cache
def oven_mp4() -> bytes:
    """A faststart H.264 MP4 made by real ffmpeg, as the oven makes one (small: 6 frames of 32x24)."""
    with tempfile.TemporaryDirectory() as name:
        out = Path(name) / "oven.mp4"
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y"]
        args += ["-f", "lavfi", "-i", "testsrc=size=32x24:rate=30:duration=0.2"]
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
        subprocess.run([*args, str(out)], check=True, capture_output=True)
        return out.read_bytes()


# ------------------------------------------------------------------------------------- mutations

INTERESTING = [0, 1, 7, 8, 9, 16, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn, original: bytes, hot: tuple[int, ...] = ()) -> bytes:
    """`original` with a few byte-level mutations: bit flips, overwritten bytes, interesting integers
    (sizes, lengths, counts), deletions, insertions, duplicated runs, truncation. `hot` are offsets of
    headers the mutations aim near half of the time."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        if hot and draw(st.booleans()):
            at = min(len(data) - 1, max(0, draw(st.sampled_from(hot)) + draw(st.integers(-4, 24))))
        else:
            at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "int", "delete", "insert", "duplicate", "truncate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[at] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
            order = draw(st.sampled_from(["big", "little"]))
            data[at : at + width] = value.to_bytes(width, order)
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        else:
            del data[at:]
    return bytes(data)


def offsets(data: bytes, *markers: bytes) -> tuple[int, ...]:
    found = []
    for marker in markers:
        at = data.find(marker)
        while at >= 0:
            found.append(at)
            at = data.find(marker, at + 1)
    return tuple(sorted(found)) or (0,)


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        chunks.append((png[at + 4 : at + 8], png[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """The chunks as a PNG, each with a correct CRC: what the damage reaches is the decoder."""
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


@st.composite
def damaged_png(draw: st.DrawFn, original: bytes) -> bytes:
    """A PNG whose chunks say something else (size, depth, colour type, interlace; damaged, cut, repeated
    or missing image data), with CRCs that agree, so Pillow decodes as far as it can."""
    chunks = png_chunks(original)
    for _ in range(draw(st.integers(1, 3))):
        if not chunks:
            break
        n = draw(st.integers(0, len(chunks) - 1))
        kind, body = chunks[n]
        op = draw(st.sampled_from(["ihdr", "body", "drop", "repeat", "idat-zlib"]))
        if op == "ihdr":
            ihdr = bytearray(chunks[0][1])
            field = draw(st.sampled_from([(0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1), (12, 1)]))
            value = draw(
                st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 255, 4096, 8001, 65535, 2**31 - 1, 2**32 - 1])
            )
            ihdr[field[0] : field[0] + field[1]] = (value % (1 << (8 * field[1]))).to_bytes(field[1], "big")
            chunks[0] = (b"IHDR", bytes(ihdr))
        elif op == "body":
            chunks[n] = (kind, draw(mutated(body)) if body else draw(st.binary(max_size=16)))
        elif op == "drop" and len(chunks) > 1:
            del chunks[n]
        elif op == "repeat":
            chunks.insert(n, chunks[n])
        elif op == "idat-zlib":  # image data that inflates to something else
            raw = draw(st.binary(max_size=64)) * draw(st.sampled_from([1, 10, 1000]))
            chunks = [c for c in chunks if c[0] != b"IDAT"]
            chunks.insert(min(1, len(chunks)), (b"IDAT", zlib.compress(raw)))
    return png_from(chunks)


def zip_entries(original: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def rezipped(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return out.getvalue()


NAMES = [
    "",
    "frame-00000.png",
    "frame-00001.png",
    "FRAME-00002.PNG",
    "frame-999999999.png",
    "frame-0000000000.png",
    "__MACOSX/frame-00000.png",
    "../frame-00000.png",
    "/frame-00000.png",
    "C:frame-00000.png",
    "dir\\frame-00001.png",
    "timing.json",
    "TIMING.JSON",
    "soundtrack.wav",
    "soundtrack.mp3",
    "soundtrack.ogg",
    "soundtrack.flac",
    "frame-\u00e9.png",
    "frame-00000.png\x00.txt",
]
TIMINGS = [
    b"[]",
    b"{}",
    b"null",
    b'{"frames": 5}',
    b'[{"duration": 1e308}, {"duration": 1e308}]',
    b'[{"duration": -1}, {"duration": "33"}, {"duration": true}]',
    b'[{"duration": 0.0000001}]',
    b'[{"duration": 1e-320}]',
    b"[" * 100_000,
    b'[{"duration": 33}]' + b" " * 1000,
    b"\xff\xfe\x00[",
]
AUDIO = [
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x44\xac\x00\x00",
    b"ID3\x04\x00\x00\x00\x00\x00\x00",
    b"\xff\xfb\x90\x00" + b"\x00" * 64,
    b"OggS" + b"\x00" * 40,
    b"fLaC" + b"\x00" * 40,
    b"#EXTM3U\nhttp://example.com/x.mp3\n",
]


@st.composite
def damaged_zip(draw: st.DrawFn, original: bytes) -> bytes:
    """The tape's entries, changed and written again as a valid ZIP (correct CRCs): frames damaged,
    renamed, dropped, repeated; hostile names; odd timing.json; soundtracks that are no audio; other
    compression methods."""
    entries = zip_entries(original)
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, len(entries) - 1))
        info, data = entries[n]
        op = draw(
            st.sampled_from(["frame", "png", "png", "rename", "drop", "repeat", "timing", "audio", "method"])
        )
        if op == "frame":
            entries[n] = (info, draw(mutated(data, offsets(data, b"IHDR", b"IDAT", b"IEND"))))
        elif op == "png" and data.startswith(b"\x89PNG"):
            entries[n] = (info, draw(damaged_png(data)))
        elif op == "rename":
            entries[n] = (zipfile.ZipInfo(draw(st.sampled_from(NAMES)), info.date_time), data)
        elif op == "drop" and len(entries) > 1:
            del entries[n]
        elif op == "repeat":
            entries.append((info, data))
        elif op in ("timing", "audio"):  # in place of the tape's own, if it has one
            name, contents = ("timing.json", TIMINGS) if op == "timing" else ("soundtrack.wav", AUDIO)
            entries = [entry for entry in entries if entry[0].filename != name]
            entries.append((zipfile.ZipInfo(name), draw(st.sampled_from(contents))))
        elif op == "method":
            info = zipfile.ZipInfo(info.filename, info.date_time)
            info.compress_type = draw(
                st.sampled_from(
                    [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
                )
            )
            entries[n] = (info, data)
    return rezipped(entries)


# -------------------------------------------------------------------------------------- budgets


def peak_kb(who: int) -> int:
    return resource.getrusage(who).ru_maxrss  # kilobytes on Linux


class Budget:
    """Runs one input: its wall time, the Python heap it allocates and the process's peak RSS stay within
    bounds; ffmpeg's runs (children) within theirs."""

    def __init__(self, seconds: float, trace: bool = True) -> None:
        self.seconds, self.trace = seconds, trace
        self.start_kb = peak_kb(resource.RUSAGE_SELF)
        self.children_kb = peak_kb(resource.RUSAGE_CHILDREN)  # the peak of earlier children (other tests')

    def run(self, call: Callable[[], T]) -> T:
        if self.trace:
            tracemalloc.start()
        started = time.monotonic()
        try:
            return call()
        finally:
            took = time.monotonic() - started
            heap = tracemalloc.get_traced_memory()[1] if self.trace else 0
            if self.trace:
                tracemalloc.stop()
            assert took < self.seconds, f"one input took {took:.1f} s"
            assert heap < PYTHON_HEAP_BYTES, f"one input allocated {heap} bytes of Python heap"
            grown = peak_kb(resource.RUSAGE_SELF) - self.start_kb
            assert grown < PROCESS_GROWTH_KB, f"peak RSS grew by {grown} KB"
            children = peak_kb(resource.RUSAGE_CHILDREN)
            assert children == self.children_kb or children < CHILD_PEAK_KB, (
                f"ffmpeg's peak RSS: {children} KB"
            )


def fails_only_as(error: type[Exception], call: Callable[[], T], budget: Budget) -> T | None:
    """The call's result, or None when it raised `error` with a one-line reason; anything else fails."""
    try:
        result = budget.run(call)
    except error as problem:
        reason = str(problem)
        assert reason.strip() and "\n" not in reason, repr(reason)
        # What the search reached (pytest --hypothesis-show-statistics): the reason without its values.
        event(f"{error.__name__}: " + re.sub(r"'.*?'|\(.*|0x[0-9a-f]+|\b\d+(\.\d+)?\b", "…", reason)[:50])
        return None
    event("sound")
    return result


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------- the ZIP


def zip_of_a_newer_version() -> bytes:
    """Found: a central directory entry asking for zip version 8.4 raised NotImplementedError."""
    data = bytearray(tape_zip())
    at = data.index(b"PK\x01\x02") + 6  # version needed to extract
    data[at : at + 2] = (84).to_bytes(2, "little")
    return bytes(data)


def entry_without_a_name() -> bytes:
    """Found: an entry whose name is empty raised IndexError (zipfile's is_dir reads its last character)."""
    return rezipped([*zip_entries(tape_zip()), (zipfile.ZipInfo(""), b"x")])


def middle_frame_with_a_lying_idat_length() -> bytes:
    """Found: a frame whose IDAT chunk claims 2 GiB made Pillow skip it with one read of a file, which
    allocates the 2 GiB up front (a MemoryError under a memory limit, not a TapeError)."""
    entries = zip_entries(tape_zip())
    info, frame = entries[1]
    at = frame.index(b"IDAT") - 4
    entries[1] = (info, frame[:at] + (2**31 - 1).to_bytes(4, "big") + frame[at + 4 :])
    return rezipped(entries)


ZIP_HOT = offsets(tape_zip(), b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"IHDR")


def check_poster(jpeg: bytes) -> None:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and max(image.size) <= 512


@examples(80)
@example(data=tape_zip())
@example(data=zip_of_a_newer_version())
@given(data=mutated(tape_zip(), ZIP_HOT))
def test_tape_zip_bytes_mutated(folder: Path, data: bytes) -> None:
    """The ZIP's own bytes damaged (headers, sizes, CRCs, the central directory, truncation): the reading
    of the ZIP and its middle frame ends in a poster frame or a TapeError."""
    budget = Budget(PURE_SECONDS)
    poster = fails_only_as(TapeError, lambda: zip_thumbnail(write(folder, "raw.zip", data)), budget)
    if poster is not None:
        check_poster(poster)


@examples(60)
@example(data=middle_frame_with_a_lying_idat_length())
@example(data=entry_without_a_name())
@given(data=damaged_zip(tape_zip()) | damaged_zip(tape_zip(soundtrack=True)))
def test_tape_zip_entries_damaged(folder: Path, data: bytes) -> None:
    """A well-formed ZIP of damaged entries: frames that are no PNG or a broken one, hostile names, odd
    timing.json, a soundtrack that is no audio, every compression method."""
    budget = Budget(PURE_SECONDS)
    poster = fails_only_as(TapeError, lambda: zip_thumbnail(write(folder, "entries.zip", data)), budget)
    if poster is not None:
        check_poster(poster)


@examples(4)
@example(data=tape_zip(soundtrack=True))
@given(data=damaged_zip(tape_zip()) | damaged_zip(tape_zip(soundtrack=True)))
def test_tape_encode_of_a_damaged_zip(folder: Path, data: bytes) -> None:
    """The whole encode with real ffmpeg: an MP4 and a poster frame, or a TapeError."""
    budget = Budget(FFMPEG_SECONDS, trace=False)
    encoded = fails_only_as(
        TapeError, lambda: encode_tape(write(folder, "encode.zip", data), max_bytes=MB, threads=1), budget
    )
    if encoded is not None:
        assert check_mp4(encoded.mp4, MB).video_codecs == ("avc1",)
        check_poster(encoded.thumbnail_jpeg)


# --------------------------------------------------------------------------------------- the PNG

PNG_HOT = offsets(painting_png(), b"IHDR", b"IDAT", b"IEND")


def check_thumbnail(png: bytes) -> None:
    assert len(png) <= 1_048_576
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (512, 512)


@examples(100)
@example(data=painting_png())
@given(data=mutated(painting_png(), PNG_HOT) | damaged_png(painting_png()))
def test_painting_png_fuzzed(data: bytes) -> None:
    """A painting's PNG damaged (raw, or chunk by chunk with CRCs that agree): a 512x512 thumbnail under
    1 MB, or an ImageProblem."""
    budget = Budget(PURE_SECONDS)
    thumbnail = fails_only_as(ImageProblem, lambda: painting_thumbnail(data), budget)
    if thumbnail is not None:
        check_thumbnail(thumbnail)


# ---------------------------------------------------------------------------- the MP4 and the JPEG


def mp4_hot() -> tuple[int, ...]:
    """Where the oven MP4's boxes start (their size fields)."""
    kinds = b"ftyp moov mvhd trak mdia hdlr minf stbl stsd avc1 mdat".split()
    return tuple(max(0, at - 4) for at in offsets(oven_mp4(), *kinds))


@examples(120)
@given(data=st.deferred(lambda: mutated(oven_mp4(), mp4_hot())))
def test_mp4_boxes_fuzzed(data: bytes) -> None:
    """The oven's MP4 damaged (box sizes, kinds, handlers, sample entries, truncation): its facts, or a
    TapeError; `check_mp4` agrees."""
    budget = Budget(PURE_SECONDS)
    facts = fails_only_as(TapeError, lambda: mp4_facts(data), budget)
    checked = fails_only_as(TapeError, lambda: check_mp4(data, 50 * MB), budget)
    if facts is None:
        assert checked is None
    if checked is not None:
        assert checked == facts and checked.faststart and checked.video_codecs[0] in ("avc1", "avc3")


@examples(6)
@given(data=st.deferred(lambda: mutated(oven_mp4(), mp4_hot())))
def test_mp4_decode_of_a_damaged_mp4(folder: Path, data: bytes) -> None:
    """ffmpeg's decode to the end (the check before an oven MP4 is used as it is): passes or TapeError."""
    fails_only_as(
        TapeError, lambda: check_decodes(write(folder, "made.mp4", data)), Budget(FFMPEG_SECONDS, trace=False)
    )


@examples(60)
@example(data=poster_jpeg())
@given(
    data=st.deferred(
        lambda: mutated(poster_jpeg(), offsets(poster_jpeg(), b"\xff\xc0", b"\xff\xc4", b"\xff\xda"))
    )
)
def test_poster_jpeg_fuzzed(data: bytes) -> None:
    """The oven's poster frame damaged: its size, or a TapeError."""
    size = fails_only_as(TapeError, lambda: check_jpeg(data, MB), Budget(PURE_SECONDS))
    if size is not None:
        assert max(size) <= 4096


def test_the_real_inputs_are_sound(folder: Path) -> None:
    """The fuzzers start from inputs that pass: what they find is the mutation's doing."""
    check_poster(zip_thumbnail(write(folder, "sound.zip", tape_zip())))
    check_thumbnail(painting_thumbnail(painting_png()))
    assert check_mp4(oven_mp4(), 50 * MB).video_codecs == ("avc1",)
    check_decodes(write(folder, "sound.mp4", oven_mp4()))
    assert check_jpeg(poster_jpeg(), MB) == (48, 32)
    json.loads(zipfile.ZipFile(io.BytesIO(tape_zip())).read("timing.json"))
