"""acpipeline.core.tape_video: real tape ZIPs in, checked MP4s and poster frames out; hostile ZIPs refused."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import stat
import struct
import subprocess
import tempfile
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from acpipeline.core.tape_video import poster, zip_reading
from acpipeline.core.tape_video.encode import EncodedTape, encode_tape, ffmpeg_exe
from acpipeline.core.tape_video.limits import TapeError, TapeLimits
from acpipeline.core.tape_video.timing import timing_fps
from acpipeline.core.tape_video.zip_reading import tape_content_key

BIG = 50 * 1024 * 1024


# ------------------------------------------------------------------------------------------ builders


def frame_png(width: int, height: int, index: int) -> bytes:
    """A frame whose ground shade encodes its index and whose square moves every frame."""
    image = Image.new("RGB", (width, height), ((index * 37) % 256, 40, 90))
    draw = ImageDraw.Draw(image)
    side = max(4, min(width, height) // 5)
    x = (index * 7) % max(1, width - side)
    y = (index * 3) % max(1, height - side)
    draw.rectangle((x, y, x + side, y + side), fill=(255, 220, 0))
    draw.point((index % width, height - 1), fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sine_wav(seconds: float, rate: int = 22_050, freq: float = 440.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        samples = (int(12_000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(int(seconds * rate)))
        w.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return out.getvalue()


def write_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def tape_entries(
    width: int,
    height: int,
    count: int,
    duration_ms: float = 1000 / 30,
    timing: str | None = "array",
    numbers: list[int] | None = None,
    extra: list[tuple[str, bytes]] | None = None,
) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    """A tape as the platform exports it, with `timing` as an array, an object, garbage or absent."""
    numbers = numbers if numbers is not None else list(range(count))
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [
        (f"frame-{n:05d}.png", frame_png(width, height, n)) for n in numbers
    ]
    rows = [
        {"frame": n, "filename": f"frame-{n:05d}.png", "duration": duration_ms, "timestamp": i * duration_ms}
        for i, n in enumerate(numbers)
    ]
    if timing == "array":
        entries.append(("timing.json", json.dumps(rows).encode()))
    elif timing == "object":
        entries.append(("timing.json", json.dumps({"frames": rows}).encode()))
    elif timing == "garbage":
        entries.append(("timing.json", b"\x00{not json at all"))
    metadata = {
        "originalSize": {"width": width, "height": height},
        "scaledSize": {"width": width, "height": height},
        "scale": 1,
        "frameCount": len(numbers),
        "totalDuration": len(numbers) * duration_ms,
        "exportedAt": "2025-01-01T00:00:00.000Z",
    }
    entries.append(("metadata.json", json.dumps(metadata).encode()))
    return entries + (extra or [])


def convert_audio(wav: bytes, tmp_path: Path, suffix: str, *codec: str) -> bytes:
    src, dst = tmp_path / "src.wav", tmp_path / f"converted{suffix}"
    src.write_bytes(wav)
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(src), *codec, str(dst)],
        check=True,
    )
    return dst.read_bytes()


# ------------------------------------------------------------------------------------------ checkers


@dataclass
class Probe:
    duration_s: float
    video_codec: str
    pix_fmt_yuv420p: bool
    width: int
    height: int
    fps: float
    audio_codec: str | None


def probe(mp4: bytes, folder: Path) -> Probe:
    """What `ffmpeg -i` says about the MP4 (there is no ffprobe)."""
    path = folder / f"probe-{hashlib.sha256(mp4).hexdigest()[:12]}.mp4"
    path.write_bytes(mp4)
    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True).stderr.decode()
    h, m, s = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err).groups()  # type: ignore[union-attr]
    video = re.search(r"Stream #.*Video: (\w+).*", err)
    assert video, err
    line = video.group(0)
    dims = re.search(r", (\d+)x(\d+)", line)
    fps = re.search(r", (\d+(?:\.\d+)?) fps", line)
    audio = re.search(r"Stream #.*Audio: (\w+)", err)
    assert dims and fps, line
    return Probe(
        duration_s=int(h) * 3600 + int(m) * 60 + float(s),
        video_codec=video.group(1),
        pix_fmt_yuv420p=", yuv420p" in line,
        width=int(dims.group(1)),
        height=int(dims.group(2)),
        fps=float(fps.group(1)),
        audio_codec=audio.group(1) if audio else None,
    )


def top_level_boxes(mp4: bytes) -> list[str]:
    boxes, at = [], 0
    while at < len(mp4):
        size, kind = struct.unpack(">I4s", mp4[at : at + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", mp4[at + 8 : at + 16])
        elif size == 0:
            size = len(mp4) - at
        assert size >= 8, f"bad box size {size} at {at}"
        boxes.append(kind.decode("latin-1"))
        at += size
    assert at == len(mp4)
    return boxes


def check_video(
    encoded: EncodedTape, folder: Path, frame_size: tuple[int, int], expected_s: float, audio: bool = False
) -> Probe:
    """H.264/yuv420p, moov before mdat, 3x even dimensions, duration within one frame of `expected_s`."""
    info = probe(encoded.mp4, folder)
    assert info.video_codec == "h264"
    assert info.pix_fmt_yuv420p
    boxes = top_level_boxes(encoded.mp4)
    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    width, height = frame_size
    assert (info.width, info.height) == (encoded.width, encoded.height)
    assert (encoded.width, encoded.height) == (width * 3 // 2 * 2, height * 3 // 2 * 2)
    assert encoded.width % 2 == 0 and encoded.height % 2 == 0
    assert encoded.scale == 3 and encoded.crf == 23
    assert info.fps == encoded.fps
    one_frame = 1 / encoded.fps
    assert abs(info.duration_s - expected_s) <= one_frame + 0.01  # ffmpeg prints hundredths
    assert abs(encoded.duration_s - expected_s) <= one_frame
    assert encoded.has_audio is audio
    assert (info.audio_codec == "aac") if audio else info.audio_codec is None
    assert encoded.encode_s > 0
    return info


def check_thumbnail(encoded: EncodedTape, size: tuple[int, int]) -> Image.Image:
    assert encoded.thumbnail_jpeg[:3] == b"\xff\xd8\xff"
    image = Image.open(io.BytesIO(encoded.thumbnail_jpeg))
    assert image.format == "JPEG"
    assert image.size == size
    assert max(image.size) <= 512
    return image


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every test's temporary folders land here; each must be gone when the test ends, failed or not."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield scratch
    assert list(scratch.iterdir()) == []


# ------------------------------------------------------------------------------------------ encodes


@pytest.mark.parametrize(
    ("width", "height", "count", "timing", "duration_ms", "fps"),
    [
        (160, 120, 24, "array", 1000 / 30, 30),
        (161, 121, 20, "array", 50.0, 20),  # odd: 483x363 becomes 482x362
        (320, 240, 12, "object", 1000 / 24, 24),
        (160, 120, 1, "array", 100.0, 10),  # a single frame
        (96, 64, 30, None, 1000 / 30, 60),  # no timing.json: 60 fps
        (96, 64, 30, "garbage", 1000 / 30, 60),
    ],
)
def test_encodes_like_the_platform(
    tmp_path: Path, width: int, height: int, count: int, timing: str | None, duration_ms: float, fps: int
) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(width, height, count, duration_ms, timing))
    encoded = encode_tape(zip_path, BIG, threads=1)
    assert encoded.fps == fps
    assert encoded.frames == count
    total_s = count * duration_ms / 1000 if timing in ("array", "object") else count / 60
    check_video(encoded, tmp_path, (width, height), total_s)
    thumb_size = (width * 3, height * 3) if max(width, height) * 3 <= 512 else (512, 384)
    check_thumbnail(encoded, thumb_size)


def test_thumbnail_is_the_middle_frame(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(64, 48, 9))
    image = check_thumbnail(encode_tape(zip_path, BIG, threads=1), (192, 144))
    shade = image.getpixel((190, 10))[0]  # the ground, far from the square
    assert abs(shade - (4 * 37) % 256) <= 6  # frame 4 of 0..8


def test_large_frames_thumbnail_fits_512(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(400, 100, 2))
    check_thumbnail(encode_tape(zip_path, BIG, threads=1), (512, 128))


def test_gaps_in_numbering_are_closed(tmp_path: Path) -> None:
    entries = tape_entries(64, 48, 5, duration_ms=100.0, numbers=[0, 1, 2, 5, 6])
    encoded = encode_tape(write_zip(tmp_path / "tape.zip", entries), BIG, threads=1)
    assert (encoded.frames, encoded.fps) == (5, 10)
    check_video(encoded, tmp_path, (64, 48), 0.5)


def test_frames_of_another_size_are_scaled_to_the_first(tmp_path: Path) -> None:
    entries = tape_entries(64, 48, 4, duration_ms=100.0)
    entries[2] = ("frame-00002.png", frame_png(50, 30, 2))
    encoded = encode_tape(write_zip(tmp_path / "tape.zip", entries), BIG, threads=1)
    check_video(encoded, tmp_path, (64, 48), 0.4)


@pytest.mark.parametrize("audio_format", ["wav", "float-wav", "flac"])
def test_soundtrack_sets_the_frame_rate(tmp_path: Path, audio_format: str) -> None:
    wav = sine_wav(1.5)
    name, data = "soundtrack.wav", wav
    if audio_format == "float-wav":  # not readable by `wave`: the duration comes from ffmpeg
        data = convert_audio(wav, tmp_path, ".wav", "-c:a", "pcm_f32le")
    elif audio_format == "flac":
        name, data = "soundtrack.flac", convert_audio(wav, tmp_path, ".flac")
    entries = tape_entries(80, 60, 30, duration_ms=1000 / 60, extra=[(name, data)])
    encoded = encode_tape(write_zip(tmp_path / "tape.zip", entries), BIG, threads=1)
    assert encoded.fps == 20  # round(30 frames / 1.5 s), not the 60 fps of timing.json
    check_video(encoded, tmp_path, (80, 60), 1.5, audio=True)


def test_wav_soundtrack_is_preferred(tmp_path: Path) -> None:
    extra = [("soundtrack.mp3", b"ID3 not really"), ("soundtrack.wav", sine_wav(1.0))]
    entries = tape_entries(48, 32, 10, extra=extra)
    encoded = encode_tape(write_zip(tmp_path / "tape.zip", entries), BIG, threads=1)
    assert encoded.has_audio and encoded.fps == 10


def test_content_key_is_the_zip_sha256(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(32, 24, 3))
    assert tape_content_key(zip_path) == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert tape_content_key(str(zip_path)) == tape_content_key(zip_path)


# ------------------------------------------------------------------------------------------ size fit


def noisy_entries(count: int) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    """Frames of fresh noise: expensive to encode, so every CRF step changes the size."""
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = []
    for n in range(count):
        image = Image.frombytes("RGB", (48, 36), hashlib.shake_256(str(n).encode()).digest(48 * 36 * 3))
        out = io.BytesIO()
        image.save(out, format="PNG")
        entries.append((f"frame-{n:05d}.png", out.getvalue()))
    return entries


def test_too_large_encode_is_redone_smaller(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", noisy_entries(8))
    first = encode_tape(zip_path, BIG, threads=1)
    assert (first.scale, first.crf) == (3, 23)
    fitted = encode_tape(zip_path, len(first.mp4) - 1, threads=1)
    assert len(fitted.mp4) < len(first.mp4)
    assert (fitted.scale, fitted.crf) != (3, 23)
    assert fitted.crf > 23 or fitted.scale < 3
    info = probe(fitted.mp4, tmp_path)
    assert (
        (info.width, info.height) == (fitted.width, fitted.height) == (48 * fitted.scale, 36 * fitted.scale)
    )


def test_impossible_size_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(32, 24, 3))
    with pytest.raises(TapeError, match=r"cannot fit in 100 bytes"):
        encode_tape(zip_path, 100, threads=1)


# ------------------------------------------------------------------------------------------ refusals


def refused(zip_path: Path, limits: TapeLimits = TapeLimits()) -> str:  # noqa: B008
    with pytest.raises(TapeError) as caught:
        encode_tape(zip_path, BIG, limits=limits, threads=1)
    reason = caught.value.reason
    assert "\n" not in reason and reason == str(caught.value)
    assert isinstance(caught.value, ValueError)
    return reason


@pytest.mark.parametrize(
    "name",
    ["../evil.png", "/etc/evil.png", "..\\evil.png", "C:/evil.png", "frames/../../evil.png", "a\\..\\..\\x"],
)
def test_entry_escaping_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    entries = tape_entries(32, 24, 2, extra=[(name, frame_png(32, 24, 0))])
    reason = refused(write_zip(tmp_path / "tape.zip", entries))
    assert reason == f"zip entry {name!r} escapes the folder"
    assert not (tmp_path / "evil.png").exists()


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("frame-00001.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = tape_entries(32, 24, 1, extra=[(link, b"/etc/passwd")])
    assert (
        refused(write_zip(tmp_path / "tape.zip", entries)) == "zip entry 'frame-00001.png' is a symbolic link"
    )


def test_garbage_is_not_a_zip(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip file at all\x00\xff" * 100)
    assert refused(garbage) == "not a zip file"
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    assert refused(empty) == "not a zip file"
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(write_zip(tmp_path / "whole.zip", tape_entries(32, 24, 3)).read_bytes()[:-30])
    assert refused(truncated) == "not a zip file"


def test_zero_frames_is_refused(tmp_path: Path) -> None:
    entries = [e for e in tape_entries(32, 24, 3) if not str(e[0]).startswith("frame-")]
    assert refused(write_zip(tmp_path / "tape.zip", entries)).startswith("zip has no frames")


def test_jpeg_named_png_is_refused(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 0, 0)).save(jpeg, format="JPEG")
    entries = tape_entries(32, 24, 3)
    entries[0] = ("frame-00000.png", jpeg.getvalue())
    assert refused(write_zip(tmp_path / "tape.zip", entries)) == "frame-00000.png is not a PNG"


def test_too_many_entries_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(16, 16, 6))  # 6 frames, timing, metadata
    assert refused(zip_path, TapeLimits(max_entries=7)) == "zip has 8 entries, more than 7"
    assert encode_tape(zip_path, BIG, TapeLimits(max_entries=8), threads=1).frames == 6


def test_oversized_central_directory_is_refused(tmp_path: Path) -> None:
    entries = [("x" * 4000, b""), *tape_entries(16, 16, 1, timing=None)]  # 3 entries, ~4 KiB of names
    reason = refused(write_zip(tmp_path / "tape.zip", entries), TapeLimits(max_entries=3))
    assert reason.startswith("zip central directory of") and reason.endswith("is too large")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    bomb = frame_png(16, 16, 0) + b"\x00" * (3 * 1024 * 1024)  # a valid head, then 3 MiB of zeros
    entries = tape_entries(16, 16, 2)
    entries[1] = ("frame-00001.png", bomb)
    zip_path = write_zip(tmp_path / "tape.zip", entries)
    assert zip_path.stat().st_size < 20_000
    assert refused(zip_path, TapeLimits(max_frame_bytes=1024 * 1024)) == "frame-00001.png exceeds 1.0 MiB"
    limits = TapeLimits(max_total_bytes=2 * 1024 * 1024)
    assert refused(zip_path, limits) == "uncompressed size exceeds 2.0 MiB"


def test_bomb_with_lying_sizes_is_refused(tmp_path: Path) -> None:
    """Headers that declare 100 bytes for an entry that inflates to 3 MiB: zipfile stops at the
    declared size and the CRC no longer matches."""
    bomb = frame_png(16, 16, 0) + b"\x00" * (3 * 1024 * 1024)
    data = bytearray(write_zip(tmp_path / "honest.zip", [("frame-00000.png", bomb)]).read_bytes())
    real = struct.pack("<I", len(bomb))
    assert data.count(real) == 2  # the local header and the central directory
    data[:] = data.replace(real, struct.pack("<I", 100))
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    assert "is unreadable" in refused(liar, TapeLimits(max_frame_bytes=1024 * 1024))


def test_inflated_bytes_are_counted_while_streaming(tmp_path: Path) -> None:
    """The cap holds whatever the headers declared: count what really comes out."""
    zip_path = write_zip(tmp_path / "tape.zip", [("frame-00000.png", b"\x00" * 5000)])
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.infolist()[0]
        with pytest.raises(TapeError, match=r"inflates beyond 1000 bytes"):
            zip_reading._copy_entry(zf, info, io.BytesIO(), 1000, zip_reading._Budget(10**9))
        with pytest.raises(TapeError, match=r"uncompressed size exceeds 1000 bytes"):
            zip_reading._copy_entry(zf, info, io.BytesIO(), 10**9, zip_reading._Budget(1000))
        out = io.BytesIO()
        zip_reading._copy_entry(zf, info, out, 5000, zip_reading._Budget(5000))
        assert len(out.getvalue()) == 5000


def test_oversized_frame_is_refused(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(160, 120, 2))
    assert (
        refused(zip_path, TapeLimits(max_frame_side=100))
        == "frame-00000.png is 160x120, larger than 100 a side"
    )


def test_large_frames_start_at_a_smaller_scale(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(100, 60, 2))
    encoded = encode_tape(zip_path, BIG, TapeLimits(max_output_side=250), threads=1)
    assert (encoded.scale, encoded.crf, encoded.width, encoded.height) == (2, 23, 200, 120)


def test_duplicate_frame_numbers_are_refused(tmp_path: Path) -> None:
    entries = tape_entries(16, 16, 2, extra=[("frame-1.png", frame_png(16, 16, 1))])
    assert refused(write_zip(tmp_path / "tape.zip", entries)) == "zip has two frames numbered 1"


def test_playlist_posing_as_soundtrack_is_refused(tmp_path: Path) -> None:
    playlist = b"#EXTM3U\n#EXTINF:1,\nhttp://169.254.169.254/latest/meta-data\n"
    entries = tape_entries(16, 16, 2, extra=[("soundtrack.wav", playlist)])
    reason = refused(write_zip(tmp_path / "tape.zip", entries))
    assert reason == "soundtrack.wav is not WAV, MP3, Ogg or FLAC audio"


def test_ffmpeg_failure_reports_the_last_stderr_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'first line' >&2\necho 'frame-00000.png: the last line' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FFMPEG_BINARY", str(fake))
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(16, 16, 2))
    assert refused(zip_path) == "ffmpeg failed: frame-00000.png: the last line"


def test_subfolders_and_unknown_files_are_ignored(tmp_path: Path) -> None:
    extra = [("__MACOSX/._frame-00000.png", b"junk"), ("notes.txt", b"hi"), ("dir/", b"")]
    entries = tape_entries(16, 16, 3, duration_ms=100.0, extra=extra)
    encoded = encode_tape(write_zip(tmp_path / "tape.zip", entries), BIG, threads=1)
    assert (encoded.frames, encoded.fps) == (3, 10)


def test_bad_arguments_are_programming_errors(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(16, 16, 1))
    with pytest.raises(ValueError, match="max_bytes"):
        encode_tape(zip_path, 0)
    with pytest.raises(ValueError, match="threads"):
        encode_tape(zip_path, BIG, threads=0)


# ------------------------------------------------------------------------------------------ timing


def rows(*durations: object) -> bytes:
    return json.dumps([{"frame": i, "duration": d} for i, d in enumerate(durations)]).encode()


@pytest.mark.parametrize(
    ("raw", "fps"),
    [
        (None, 60),
        (rows(16.667, 16.666, 16.667), 60),
        (rows(33.3, 33.4), 30),
        (json.dumps({"frames": json.loads(rows(40, 40))}).encode(), 25),
        (rows(20, 20, 20, 20 / 0.9), 49),  # mean 20.56 ms: 48.65 fps
        (b"not json", 60),
        (b"{}", 60),
        (b"42", 60),
        (json.dumps({"frames": "nope"}).encode(), 60),
        (rows(None, "20", True), 60),  # no usable duration
        (rows(1), 120),  # clamped
        (rows(5000), 1),
        (rows(0, -5, 50), 20),  # only positive durations count
        (b'[{"duration": NaN}, {"duration": Infinity}, {"duration": 25}]', 40),
        (b"[" * 100_000, 60),  # nesting too deep for json
        (b"\xff\xfe garbage", 60),
    ],
)
def test_timing_fps(raw: bytes | None, fps: int) -> None:
    assert timing_fps(raw) == fps


def test_fps_rounds_half_up_like_javascript() -> None:
    assert timing_fps(rows(400)) == 3  # 2.5 -> 3, where Python's round() would give 2


def test_work_folder_is_removed_after_a_failure(
    tmp_path: Path, private_tempdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def failing_thumbnail(frame: Path, name: str) -> bytes:
        seen.append(frame.parent)
        assert sorted(p.name for p in frame.parent.iterdir()) == [f"frame-0000{n}.png" for n in range(3)]
        raise TapeError(f"{name} cannot be decoded (simulated)")

    monkeypatch.setattr(poster, "poster_jpeg", failing_thumbnail)
    zip_path = write_zip(tmp_path / "tape.zip", tape_entries(16, 16, 3, timing=None))
    assert refused(zip_path) == "frame-00001.png cannot be decoded (simulated)"
    assert seen and seen[0].parent == private_tempdir
    assert not seen[0].exists()
