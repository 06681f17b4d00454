"""Everything that runs ffmpeg: a tape's frames encoded into an MP4, and the checks and fixes of MP4s made
elsewhere (the oven's bakes, ac-native recordings).

Not pure: each step runs ffmpeg as a subprocess, with a time limit. The commands are ffmpeg-python graphs,
compiled to argument lists and run by `run_ffmpeg` (ffmpeg-python's own `run` has no time limit).

The encode follows the platform's converter (`tape-to-mp4.mjs`): frames at a constant frame rate,
3x nearest-neighbour, even dimensions, H.264 (libx264) in yuv420p, AAC 128k when there is a
soundtrack, `+faststart`. When the result is larger than the caller's limit it is re-encoded with a
higher CRF, then at a smaller scale, until it fits.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ffmpeg  # ffmpeg-python: no type hints, so its graphs are `Any` here

from acpipeline.core.tape_video.limits import DEFAULT_LIMITS, UPSCALE, TapeError, TapeLimits, shown_name
from acpipeline.core.tape_video.poster import middle_frame_poster
from acpipeline.core.tape_video.timing import clamp_fps, timing_fps, wav_seconds
from acpipeline.core.tape_video.zip_reading import FRAME_PATTERN, ExtractedTape, Soundtrack, extract_tape

VIDEO_MIME = "video/mp4"
CRF_STEPS = (23, 28, 33, 38)  # tried in order at the largest scale; smaller scales use the last one
# superfast plus veryfast's macroblock-tree lookahead: measured ~1.2-2x faster than veryfast on 3x pixel
# art (320x240 frames -> 960x720) for ~10-25% larger files; plain superfast makes them ~60-75% larger.
PRESET = "superfast"
X264_PARAMS = "mbtree=1:rc-lookahead=10"
AUDIO_BITRATE = "128k"
_QUIET = ("-hide_banner", "-nostdin", "-loglevel", "error")  # errors only; stderr's last line is the reason
_H264 = {"c:v": "libx264", "preset": PRESET, "x264-params": X264_PARAMS, "pix_fmt": "yuv420p"}
_AAC = {"c:a": "aac", "b:a": AUDIO_BITRATE}
_FASTSTART = {"movflags": "+faststart"}


@dataclass(frozen=True)
class EncodedTape:
    """The MP4 (width x height, `scale` times the frames, encoded at `crf`) and its JPEG poster frame.

    `duration_s` is frames / fps, or with a soundtrack the shorter of that and the audio (`-t`).
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


def encode_tape(
    zip_path: str | os.PathLike[str],
    max_bytes: int,
    limits: TapeLimits = DEFAULT_LIMITS,
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
        tape = extract_tape(Path(zip_path), work, limits)
        if tape.soundtrack is None:
            fps = timing_fps(tape.timing)
            duration_s = tape.frames / fps
        else:
            audio_s = audio_seconds(tape.soundtrack, limits)
            fps = clamp_fps(tape.frames / audio_s)
            duration_s = min(audio_s, tape.frames / fps)
        thumbnail = middle_frame_poster(work, tape)
        attempts = _attempts(tape.width, tape.height, limits.max_output_side)
        if not attempts:
            raise TapeError(f"frames of {tape.width}x{tape.height} cannot be made into a video")
        encode_s = 0.0
        smallest: tuple[int, int, int] | None = None
        for scale, crf in attempts:
            out = work / f"tape-{scale}x-crf{crf}.mp4"
            started = time.monotonic()
            command = tape_command(work, tape, fps, scale, crf, threads, out, duration_s)
            run_ffmpeg(command, limits.max_encode_s)
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


def tape_command(
    work: Path,
    tape: ExtractedTape,
    fps: int,
    scale: int,
    crf: int,
    threads: int | None,
    out: Path,
    duration_s: float,
) -> list[str]:
    """The platform's encode of the frames in `work`, with its two scales (`scale=iw*3:ih*3`, then
    `scale=trunc(iw/2)*2:trunc(ih/2)*2`, both nearest) done as one of the same size, ~5x cheaper.

    With a soundtrack the output ends at `duration_s` (`-t`), the shorter stream's end, as the oven's
    `-shortest` ends it: ffmpeg's `-shortest` (7 and later) fails the encode now and then when the video
    ends before the audio encoder has opened ("Could not open encoder before EOF"), seen in 7 of 200
    encodes of a short tape on a loaded machine; it also buffered up to 10 s of scaled frames."""
    width, height = _even_dims(tape.width, tape.height, scale)
    pattern = str(work).replace("%", "%%") + "/" + FRAME_PATTERN  # a literal % in the folder must not count
    frames = _local_input(pattern, "image2", start_number=0, r=fps, **_threads(threads))
    streams = [frames["v:0"].filter("scale", width, height, flags="neighbor")]
    audio: dict[str, object] = {}
    if tape.soundtrack is not None:
        streams.append(_local_input(tape.soundtrack.path, tape.soundtrack.format)["a:0"])
        audio = {**_AAC, "t": f"{duration_s:.6f}"}
    graph = ffmpeg.output(*streams, str(out), crf=crf, **_H264, **_threads(threads), **audio, **_FASTSTART)
    if threads is not None:  # the scale is a filter graph's (-filter_complex), not a -vf's (-filter_threads)
        graph = graph.global_args("-filter_complex_threads", str(threads))
    return _compile(graph, overwrite=True)


def audio_seconds(soundtrack: Soundtrack, limits: TapeLimits) -> float:
    """Seconds of audio: from the WAV header when it tells, else by decoding it with ffmpeg (exact, and
    there is no ffprobe)."""
    if soundtrack.format == "wav":
        seconds = wav_seconds(soundtrack.path)
        if seconds is not None:
            return seconds
    graph = _local_input(soundtrack.path, soundtrack.format)["a:0"].output("-", format="null")
    command = _compile(graph.global_args("-progress", "pipe:1", "-nostats"))
    progress = run_ffmpeg(command, limits.max_encode_s).stdout.decode("ascii", "replace")
    stamps = re.findall(r"^out_time_us=(\d+)$", progress, re.MULTILINE)
    seconds = int(stamps[-1]) / 1e6 if stamps else 0.0
    if seconds <= 0:
        raise TapeError(f"{shown_name(soundtrack.name, quote=False)} has no audio")
    return seconds


# ------------------------------------------------------------------------------ MP4s made elsewhere


def check_decodes(mp4: Path, limits: TapeLimits = DEFAULT_LIMITS) -> None:
    """Decode the MP4's video stream to the end, failing on the first error: an MP4 whose boxes look right
    (core/mp4.py) but whose stream is damaged is not used as it is."""
    video = _local_input(mp4, "mp4", threads=1, err_detect="explode")["v:0"]
    command = _compile(video.output("-", format="null").global_args("-xerror"))
    run_ffmpeg(command, limits.max_encode_s)


def remux_faststart(src: Path, out: Path, limits: TapeLimits = DEFAULT_LIMITS) -> None:
    """The same streams, copied, with `moov` moved before `mdat`."""
    source = _local_input(src, "mp4")
    graph = ffmpeg.output(source["v:0"], source["a:0?"], str(out), c="copy", **_FASTSTART)
    run_ffmpeg(_compile(graph, overwrite=True), limits.max_encode_s)


def transcode_mp4(
    src: Path, max_bytes: int, limits: TapeLimits = DEFAULT_LIMITS, threads: int | None = None
) -> bytes:
    """Any video ffmpeg reads from an MP4 container, as the platform's H.264/yuv420p (AAC) with faststart,
    at most `limits.max_output_side` a side, re-encoded at higher CRFs until it fits `max_bytes`."""
    side = limits.max_output_side
    source = _local_input(src, "mp4", **_threads(threads))
    video = source["v:0"].filter(
        "scale",
        w=f"min(iw,{side})",
        h=f"min(ih,{side})",
        force_original_aspect_ratio="decrease",
        force_divisible_by=2,
        flags="neighbor",
    )
    smallest = None
    with tempfile.TemporaryDirectory(prefix="acpipeline-tape-") as tmp:
        for crf in CRF_STEPS:
            out = Path(tmp) / f"crf{crf}.mp4"
            graph = ffmpeg.output(
                video, source["a:0?"], str(out), crf=crf, **_H264, **_threads(threads), **_AAC, **_FASTSTART
            )
            run_ffmpeg(_compile(graph, overwrite=True), limits.max_encode_s)
            size = out.stat().st_size
            if size <= max_bytes:
                return out.read_bytes()
            smallest = min(size, smallest or size)
    raise TapeError(f"video cannot fit in {max_bytes} bytes: the smallest encode was {smallest} bytes")


# ------------------------------------------------------------------------------------------ ffmpeg


def ffmpeg_exe() -> str:
    """FFMPEG_BINARY when set, else the binary imageio-ffmpeg ships."""
    configured = os.environ.get("FFMPEG_BINARY")
    if configured:
        return configured
    import imageio_ffmpeg  # imported late: only needed without FFMPEG_BINARY

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def run_ffmpeg(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Run a compiled ffmpeg command; a failure becomes TapeError with stderr's last line."""
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


def _compile(graph: Any, overwrite: bool = False) -> list[str]:
    """The graph as ffmpeg's argument list, run quietly by our binary (`-y` when it writes a file)."""
    command: list[str] = graph.compile(cmd=[ffmpeg_exe(), *_QUIET], overwrite_output=overwrite)
    return command


def _local_input(path: str | Path, demuxer: str, **options: object) -> Any:
    """A local-file-only input with a forced demuxer: ffmpeg never probes content into a network reader."""
    return ffmpeg.input(str(path), format=demuxer, protocol_whitelist="file", **options)


def _threads(threads: int | None) -> dict[str, int]:
    """`-threads N`, given to an input (its decoder) and to an output (its encoder); none lets ffmpeg pick."""
    return {} if threads is None else {"threads": threads}


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
