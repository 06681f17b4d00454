"""The media files written once the documents are made: each job draws its file from a seed of its own,
so worker processes can write them in any order; and the MP4 the oven bakes from a tape's ZIP."""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image

from acpipeline.demo.dataset.media_files import build_recording_zip, build_tape_zip, make_painting, quick_png

MEDIA_WORKERS = 4  # at most this many processes write media files (never more than the machine's cores)


@dataclass
class TapeJob:
    path: Path
    width: int
    height: int
    frames: int
    fps: int
    soundtrack: bool
    seed: int
    exported_at: datetime

    def run(self) -> None:
        build_tape_zip(
            self.path,
            self.width,
            self.height,
            self.frames,
            self.fps,
            self.soundtrack,
            random.Random(self.seed),
            self.exported_at,
        )

    def cost(self) -> int:
        return self.width * self.height * self.frames


@dataclass
class PaintingJob:
    path: Path
    width: int
    height: int
    noisy: bool
    seed: int

    def run(self) -> None:
        img = make_painting(self.width, self.height, random.Random(self.seed), self.noisy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(quick_png(img))

    def cost(self) -> int:
        return self.width * self.height


@dataclass
class RecordingJob:
    path: Path
    width: int
    height: int
    steps: int
    seed: int
    when: datetime

    def run(self) -> None:
        build_recording_zip(
            self.path, self.width, self.height, self.steps, random.Random(self.seed), self.when
        )

    def cost(self) -> int:
        return self.width * self.height * self.steps


MediaJob = TapeJob | PaintingJob | RecordingJob


@dataclass
class OvenJob:
    """What the platform's oven makes of a tape's ZIP (once the ZIP is written): the MP4 and poster frame
    it uploads to its bucket as `tapes/{code}.mp4` and `tapes/{code}-thumb.jpg`."""

    zip_path: Path
    mp4_path: Path
    thumbnail_path: Path
    fps: int

    def run(self) -> None:
        bake_oven_mp4(self.zip_path, self.mp4_path, self.thumbnail_path, self.fps)


def bake_oven_mp4(zip_path: Path, mp4_path: Path, thumbnail_path: Path, fps: int) -> None:
    """An MP4 of the tape's frames as the oven (`oven/baker.mjs`) makes one: 3x nearest-neighbour, even
    sides, libx264 at its default preset, yuv420p, faststart (its bytes differ from our sync's encode);
    and its poster frame, the middle frame 3x as a JPEG. Deterministic: one thread, no version tags."""
    from acpipeline.core.tape_video.encode import ffmpeg_exe  # imported late: only the oven needs ffmpeg

    mp4_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="acpipeline-oven-") as work, zipfile.ZipFile(zip_path) as zf:
        frames = sorted(n for n in zf.namelist() if n.startswith("frame-") and n.endswith(".png"))
        for name in frames:
            Path(work, name).write_bytes(zf.read(name))
        out = Path(work) / "tape.mp4"
        args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", "-framerate", str(fps)]
        args += ["-i", str(Path(work) / "frame-%05d.png")]
        args += ["-vf", "scale=iw*3:ih*3:flags=neighbor,scale=trunc(iw/2)*2:trunc(ih/2)*2:flags=neighbor"]
        args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-threads", "1", "-movflags", "+faststart"]
        args += ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", str(out)]
        subprocess.run(args, check=True, capture_output=True, timeout=300)
        mp4_path.write_bytes(out.read_bytes())
        with Image.open(io.BytesIO(zf.read(frames[len(frames) // 2]))) as frame:
            poster = frame.convert("RGB").resize(
                (frame.width * 3, frame.height * 3), Image.Resampling.NEAREST
            )
    buf = io.BytesIO()
    poster.save(buf, format="JPEG", quality=90)
    thumbnail_path.write_bytes(buf.getvalue())


def _run_jobs(jobs: Sequence[MediaJob]) -> int:
    for job in jobs:
        job.run()
    return len(jobs)


def run_media_jobs(jobs: Sequence[MediaJob], workers: int | None = None) -> None:
    """Write the files: in this process when there are few, else in worker processes (`spawn`: this
    process may have threads running), the costliest jobs first, the small ones in chunks."""
    if workers is None:
        workers = min(MEDIA_WORKERS, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 16:
        _run_jobs(jobs)
        return
    ordered = sorted(jobs, key=lambda job: job.cost(), reverse=True)
    chunks: list[list[MediaJob]] = []
    for job in ordered:
        if chunks and len(chunks[-1]) < 64 and sum(j.cost() for j in chunks[-1]) + job.cost() <= 4_000_000:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_run_jobs, chunk) for chunk in chunks]:
            future.result()
