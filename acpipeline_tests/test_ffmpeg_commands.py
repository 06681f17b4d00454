"""The argument lists the ffmpeg-python graphs of core/tape_video/encode.py compile to, pinned.

The tape encode is the platform oven's command (`-r <fps> -i frame-%05d.png [-i soundtrack]`, 3x nearest
to even dimensions, `-c:v libx264 -pix_fmt yuv420p [-c:a aac -b:a 128k] -movflags +faststart`), with what
is ours: the oven's two scales done as one of the same size, the x264 preset, a CRF, `-t` where the oven
has `-shortest`, inputs limited to local files with forced demuxers, thread limits, and quiet output.
ffmpeg-python sorts each input's and output's options by name and routes filters through
`-filter_complex`; ffmpeg reads them the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from acpipeline.core.tape_video import encode
from acpipeline.core.tape_video.limits import TapeLimits
from acpipeline.core.tape_video.zip_reading import ExtractedTape, Soundtrack

QUIET = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]
# the output options every encode shares, in ffmpeg-python's order
H264 = ["-c:v", "libx264", "-crf", "23", "-movflags", "+faststart", "-pix_fmt", "yuv420p"]
H264 += ["-preset", "superfast"]
WORK = Path("/work/100%")


@pytest.fixture(autouse=True)
def plain_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFMPEG_BINARY", "ffmpeg")


def tape(soundtrack: Soundtrack | None) -> ExtractedTape:
    names = tuple(f"frame-{n:05d}.png" for n in range(3))
    return ExtractedTape(frames=3, width=161, height=121, names=names, timing=None, soundtrack=soundtrack)


def test_tape_encode_without_soundtrack() -> None:
    command = encode.tape_command(WORK, tape(None), 30, 3, 23, None, WORK / "out.mp4", 0.1)
    assert command == [
        *QUIET,
        *("-f", "image2", "-protocol_whitelist", "file", "-r", "30", "-start_number", "0"),
        *("-i", "/work/100%%/frame-%05d.png"),
        # the oven's scale=iw*3:ih*3 (483x363), then scale=trunc(iw/2)*2:trunc(ih/2)*2, both nearest
        *("-filter_complex", "[0:v:0]scale=482:362:flags=neighbor[s0]", "-map", "[s0]"),
        *H264,
        *("-x264-params", "mbtree=1:rc-lookahead=10"),
        *("/work/100%/out.mp4", "-y"),
    ]


def test_tape_encode_with_soundtrack_and_threads() -> None:
    soundtrack = Soundtrack(WORK / "soundtrack", "soundtrack.flac", "flac")
    command = encode.tape_command(WORK, tape(soundtrack), 24, 3, 23, 2, WORK / "out.mp4", 0.125)
    assert command == [
        *QUIET,
        *("-f", "image2", "-protocol_whitelist", "file", "-r", "24", "-start_number", "0", "-threads", "2"),
        *("-i", "/work/100%%/frame-%05d.png"),
        *("-f", "flac", "-protocol_whitelist", "file", "-i", "/work/100%/soundtrack"),
        *("-filter_complex", "[0:v:0]scale=482:362:flags=neighbor[s0]", "-map", "[s0]", "-map", "1:a:0"),
        *("-b:a", "128k", "-c:a", "aac"),
        *H264,
        # the shorter stream's end, given (not -shortest, which fails an encode now and then in ffmpeg 7+)
        *("-t", "0.125000", "-threads", "2"),
        *("-x264-params", "mbtree=1:rc-lookahead=10"),
        *("/work/100%/out.mp4", "-filter_complex_threads", "2", "-y"),
    ]


def test_commands_for_mp4s_made_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode check, the faststart remux and the transcode (its scale's commas escaped for the graph)."""
    commands: list[list[str]] = []

    def record(command: list[str], timeout_s: float) -> None:
        commands.append(command)
        if command[-1] == "-y":
            Path(command[-2]).write_bytes(b"mp4")

    monkeypatch.setattr(encode, "run_ffmpeg", record)
    src = tmp_path / "in.mp4"
    encode.check_decodes(src)
    encode.remux_faststart(src, tmp_path / "remuxed.mp4")
    assert encode.transcode_mp4(src, 100, TapeLimits(max_output_side=1080), threads=1) == b"mp4"
    source = ["-f", "mp4", "-protocol_whitelist", "file"]
    transcoded = commands[2][-2]
    assert commands == [
        [*QUIET, *source[:2], "-err_detect", "explode", *source[2:], "-threads", "1", "-i", str(src)]
        + ["-map", "0:v:0", "-f", "null", "-", "-xerror"],
        [*QUIET, *source, "-i", str(src), "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy"]
        + ["-movflags", "+faststart", str(tmp_path / "remuxed.mp4"), "-y"],
        [*QUIET, *source, "-threads", "1", "-i", str(src), "-filter_complex"]
        + [
            "[0:v:0]scale=flags=neighbor:force_divisible_by=2:force_original_aspect_ratio=decrease"
            ":h=min(ih\\,1080):w=min(iw\\,1080)[s0]"
        ]
        + ["-map", "[s0]", "-map", "0:a:0?", "-b:a", "128k", "-c:a", "aac", *H264, "-threads", "1"]
        + ["-x264-params", "mbtree=1:rc-lookahead=10", transcoded, "-y"],
    ]


@pytest.mark.parametrize("module", ["limits", "zip_reading", "timing", "poster"])
def test_only_encode_runs_ffmpeg(module: str) -> None:
    """The pure modules import no subprocess, no ffmpeg, and not the module that runs it."""
    source = (Path(encode.__file__).parent / f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not imported & {"subprocess", "ffmpeg", "imageio_ffmpeg", "acpipeline.core.tape_video.encode"}
