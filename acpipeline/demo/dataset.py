"""A realistic synthetic Aesthetic Computer dataset: MongoDB documents plus the media files they point at.

Everything except account passwords is deterministic for a given seed. Accounts are created through an
injected callable, so this module knows nothing about the PDS client; every user, handle and password is
decided first, then the accounts are created by a few threads at once (the PDS hashes each password, a third
of a second of its CPU) while the media files are written by worker processes.

Besides the documents, the platform's newer shapes (spec: "Since mid-2026"): paintings in progress and
sealed ones, KidLisp projection rows, a tape the oven baked. The records the platform's own code wrote for
some of them are only described here (`DatasetSummary.platform_records`); whoever seeds creates them on the
PDS afterwards (`acpipeline.demo.environment.write_platform_records`), which assigns their rkeys. Baked
tapes' `mp4Url` point into the oven's bucket as the environment configures it (ACPIPELINE_BLOBS_URL).
"""

from __future__ import annotations

import array
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import secrets
import shutil
import string
import struct
import subprocess
import tempfile
import threading
import time
import wave
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from PIL import Image, ImageDraw

from acpipeline.demo import SIZES  # defined there: the command line reads it without this module
from acpipeline.demo.media_server import BLOBS_BUCKET
from acpipeline.errors import OperatorError
from acpipeline.settings import DEFAULT_BLOBS_URL

if TYPE_CHECKING:
    from acpipeline.resources.mongo import MongoDatabase

CreateAccount = Callable[[str, str], str]  # (pds_handle, password) -> did

USER_BUCKET = "user-aesthetic-computer"
ART_BUCKET = "art-aesthetic-computer"
ART_GUEST_SUB = "art-guest"
ART_GUEST_HANDLE = "art.at.aesthetic.computer"
# The editor's saved states of paintings in progress live in the GridFS bucket `painting-states`.
STATE_FILES, STATE_CHUNKS = "painting-states.files", "painting-states.chunks"
COLLECTIONS = (
    "users", "@handles", "paintings", "moods", "pieces", "kidlisp", "tapes", "news-posts",
    STATE_FILES, STATE_CHUNKS,
)  # fmt: skip
MEDIA_COLLECTIONS = ("paintings", "moods", "pieces", "kidlisp", "tapes", "news-posts")
AC = "https://aesthetic.computer"
KIDLISP_NSID = "computer.aesthetic.kidlisp"
TAPE_NSID = "computer.aesthetic.tape"
WIP_STATUS, DONE_STATUS = "wip", "done"  # `status` of a painting in progress and of one sealed ("Done")
BLOBS_URL_ENV = "ACPIPELINE_BLOBS_URL"  # where the sync finds the oven's bucket (the demo's media server)
NEWS_BODY_MAX = 10_000  # the news lexicon's `body` limit in UTF-8 bytes: admin posts are not capped
KIDLISP_MAX = 50_000
ACCOUNT_WORKERS = 8  # createAccount calls at once (the platform found 10 concurrent creates stable)
MEDIA_WORKERS = 4  # at most this many processes write media files (never more than the machine's cores)

_EPOCH_START = datetime(2023, 3, 1)
_EPOCH_END = datetime(2025, 10, 31)
# The platform's newer shapes (paintings in progress, KidLisp projection rows, tapes linked under `at`) date
# from mid-2026; `kidlisp-backfill.mjs` filled the missing projection rows in later.
_SHAPES_START = datetime(2026, 6, 1)
_SHAPES_END = datetime(2026, 10, 31)
_BACKFILL_START = datetime(2026, 11, 1)
_BACKFILL_END = datetime(2026, 11, 15)
_NANOID = string.ascii_letters + string.digits + "_-"  # the editor's ids and keys: [a-zA-Z0-9_-]
GRIDFS_CHUNK = 261_120  # GridFS's default chunk size
_ALNUM = string.ascii_letters + string.digits
_CODE_ALPHABET = string.ascii_lowercase + string.digits
_PALETTE = [
    (0, 0, 0), (255, 255, 255), (255, 0, 77), (255, 163, 0), (255, 236, 39), (0, 228, 54),
    (41, 173, 255), (131, 118, 156), (255, 119, 168), (29, 43, 83), (126, 37, 83), (0, 135, 81),
    (171, 82, 54), (95, 87, 79), (194, 195, 199), (255, 241, 232),
]  # fmt: skip


class DatasetExists(OperatorError):
    """The target database already holds users; pass reset=True to replace them."""


@dataclass(frozen=True)
class DemoUser:
    """One platform user (or the art-guest account that owns anonymous work)."""

    sub: str
    ac_handle: str | None
    pds_handle: str | None
    password: str | None
    did: str | None = None


@dataclass
class PlatformRecord:
    """A record the platform's own code wrote on the PDS, not our sync: a KidLisp piece saved through its
    own store (`kidlisp-projection.mjs`'s row in MongoDB, no `ref` in the record), or a tape the oven baked
    (`tape-atproto.mjs`, linked back under `at`). This module knows no PDS client: whoever seeds creates
    them once the documents are in MongoDB (`acpipeline.demo.environment.write_platform_records`), without
    an rkey (the PDS assigns a TID, as `createRecord` without one does), and fills in `uri` and `cid`."""

    owner: str  # the sub of the account's user (art-guest for anonymous work)
    handle: str  # the account's PDS handle, as MongoDB names it
    collection: str  # the record's NSID
    value: dict[str, Any]  # the record as the platform writes it, without its blobs
    # field -> {"path": the file to upload, "mime_type": ...}: uploaded, then set in the value
    blobs: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str | None = None  # the MongoDB collection of `ref`
    ref: str | None = None  # the document behind it (None: a record MongoDB has no row for)
    link: str | None = None  # the document field the platform writes {rkey, uri, cid} into (`at`)
    did: str | None = None  # once the account exists
    uri: str | None = None  # once created
    cid: str | None = None

    @property
    def rkey(self) -> str | None:
        return self.uri.rsplit("/", 1)[1] if self.uri else None


@dataclass
class DatasetSummary:
    """What was generated: counts, users, and references to the edge cases a sync must handle."""

    size: str
    seed: int
    media_root: str
    counts: dict[str, int]
    users: list[DemoUser]
    handles_with_accounts: list[str]
    user_without_account: DemoUser | None
    flat_fields_user: DemoUser | None
    art_guest: DemoUser
    owned_counts: dict[str, dict[str, int]]  # sub -> collection -> documents (removed ones included)
    anonymous_counts: dict[str, int]  # collection -> documents without an owner (removed ones included)
    removed_counts: dict[str, int]  # collection -> nuked / deleted documents
    recordings: int  # painting recording ZIPs written
    missing_image_painting: dict[str, Any] | None = None  # doc exists, PNG does not
    missing_zip_tape: dict[str, Any] | None = None  # doc exists, ZIP does not
    broken_zip_tape: dict[str, Any] | None = None  # ZIP exists but is truncated
    null_user_painting: dict[str, Any] | None = None  # anonymous with `user: null` rather than absent
    large_painting: dict[str, Any] | None = None  # original PNG above 1 MB (must never be the thumbnail)
    long_kidlisp: dict[str, Any] | None = None
    long_news_body: dict[str, Any] | None = None  # over the news lexicon's body limit: a failed item
    soundtrack_tape: dict[str, Any] | None = None
    same_when_moods: list[str] = field(default_factory=list)  # two moods sharing one `when`
    # The platform's newer shapes (refs as above). Paintings in progress (`status: "wip"`, `slug:
    # "wip/<id>"`, a `wip` sub-document, no PNG) are no items: never a record, never a failure.
    wip_paintings: list[dict[str, Any]] = field(default_factory=list)  # ref | {"steps", "empty"}
    sealed_paintings: list[dict[str, Any]] = field(default_factory=list)  # "done", `wip` kept, PNG there
    # KidLisp identity rows (`kidlisp-projection.mjs`); "platform_record": whether the platform wrote one
    kidlisp_projection_rows: list[dict[str, Any]] = field(default_factory=list)
    platform_tapes: list[dict[str, Any]] = field(default_factory=list)  # oven-baked, linked under `at`
    # Records the platform wrote itself, to be created on the PDS after seeding (see PlatformRecord) ...
    platform_records: list[PlatformRecord] = field(default_factory=list)
    # ... of which these KidLisp ones have no row in MongoDB (code, owner, handle): the sync keeps them.
    orphan_kidlisp_records: list[dict[str, Any]] = field(default_factory=list)
    # What a complete sync should write, computed from the documents: items not nuked or deleted, whose
    # owner has a PDS account (or that are anonymous, for the art account), minus the failing cases above
    # (missing image, missing or broken tape ZIP).
    records_expected: dict[str, int] = field(default_factory=dict)  # collection -> records
    records_expected_total: int = 0
    # What the accounts hold after a complete sync once the platform records exist: records_expected_total
    # plus the orphan KidLisp records (the platform's records of items in MongoDB are adopted, not added).
    records_on_pds_total: int = 0
    # Items per user, over the platform's users (art-guest excluded): for "all" users and for those
    # "with_account", per collection and "items" (all six): users with any, median, p90, p99, max.
    items_per_user: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def user(self, handle: str) -> DemoUser:
        """The user whose AC handle or PDS handle is `handle`."""
        for user in self.users:
            if handle in (user.ac_handle, user.pds_handle):
                return user
        raise KeyError(handle)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (passwords included: this is throwaway demo data)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------- media files


def painting_key(slug: str, user: str | None) -> str:
    """The production object key of a painting's PNG (the part after `:` is the recording)."""
    image_slug = slug.partition(":")[0]
    return f"{user}/painting/{image_slug}.png" if user else f"{image_slug}.png"


def zip_key(slug: str, user: str | None) -> str:
    """The object key of a recording or tape ZIP: `{user/ if any}{slug}.zip`."""
    return f"{user}/{slug}.zip" if user else f"{slug}.zip"


def recording_slug(slug: str) -> str:
    image_slug, _, rec = slug.partition(":")
    return rec or image_slug


def _png_bytes(img: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def make_painting(width: int, height: int, rng: random.Random, noisy: bool = False) -> Image.Image:
    """A pixel-art painting: a flat or transparent ground with pixel-aligned strokes and blocks (large
    canvases are often drawn at a lower resolution and enlarged, giving chunky pixels)."""
    chunk = rng.choice((1, 2, 4)) if min(width, height) >= 256 and not noisy else 1
    if chunk > 1:
        small = make_painting(max(1, width // chunk), max(1, height // chunk), rng)
        return small.resize((width, height), Image.Resampling.NEAREST)
    transparent = rng.random() < 0.2
    ground = (0, 0, 0, 0) if transparent else (*rng.choice(_PALETTE), 255)
    img = Image.new("RGBA", (width, height), ground)
    if noisy:  # camera-like noise over most of the canvas: a PNG that does not compress
        noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).convert("RGBA")
        img.paste(noise, (0, 0))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 24)):
        colour = (*rng.choice(_PALETTE), rng.choice((255, 255, 255, 160)))
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = rng.randrange(width), rng.randrange(height)
        kind = rng.random()
        if kind < 0.4:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, max(1, min(width, height) // 16)))
        elif kind < 0.7:
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=colour)
        else:
            draw.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=colour, width=2)
    for _ in range(rng.randint(10, 60)):  # stray pixels
        img.putpixel((rng.randrange(width), rng.randrange(height)), (*rng.choice(_PALETTE), 255))
    return img


def _zip_info(name: str, when: datetime, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def build_recording_zip(
    path: Path, width: int, height: int, steps: int, rng: random.Random, when: datetime | None = None
) -> None:
    """A painting recording: `painting.json` (the steps) and one PNG per step, built up stroke by stroke."""
    when = when or _EPOCH_START
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (width, height), (*rng.choice(_PALETTE), 255))
    draw = ImageDraw.Draw(img)
    records = []
    with zipfile.ZipFile(path, "w") as zf:
        for step in range(steps):
            colour = (*rng.choice(_PALETTE), 255)
            x0, y0, x1, y1 = (
                rng.randrange(width),
                rng.randrange(height),
                rng.randrange(width),
                rng.randrange(height),
            )
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, 3))
            name = f"{step}.png"
            zf.writestr(_zip_info(name, when, False), _png_bytes(img, 1))
            stamp = when + timedelta(seconds=step * 2)
            records.append(
                {
                    "step": step,
                    "label": rng.choice(("line", "rect", "smear", "oval")),
                    "timestamp": int(stamp.replace(tzinfo=UTC).timestamp() * 1000),
                    "gesture": [[x0, y0], [x1, y1]],
                }
            )
        zf.writestr(_zip_info("painting.json", when, True), json.dumps(records))


def _tape_frame_colour(i: int, base: int) -> tuple[int, int, int]:
    hue = (base + i * 5) % 360
    r, g, b = (int(127 + 100 * math.sin(math.radians(hue + k))) for k in (0, 120, 240))
    return r, g, (b + i) % 256  # `+ i` keeps consecutive frames different even if the sine repeats


def build_tape_zip(
    path: Path,
    width: int,
    height: int,
    frames: int,
    fps: int = 30,
    soundtrack: bool = False,
    rng: random.Random | None = None,
    exported_at: datetime | None = None,
) -> None:
    """A tape ZIP as the platform exports it: `frame-%05d.png` frames (every one different), `timing.json`,
    `metadata.json` and optionally `soundtrack.wav` (a sine lasting frames/fps seconds)."""
    rng = rng or random.Random(0)
    exported_at = exported_at or _EPOCH_START
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = 1000 / fps
    base_hue = rng.randrange(360)
    size = max(4, min(width, height) // rng.randint(4, 8))
    x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
    speed = rng.uniform(1.5, 4.0)
    angle = rng.uniform(0, 2 * math.pi)
    dx, dy = speed * math.cos(angle), speed * math.sin(angle)
    if abs(dx) < 1:
        dx = math.copysign(1.0, dx or 1.0)
    # A static pixel-art layer over the changing ground, so frames look like a canvas, not a test card.
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(layer)
    for _ in range(rng.randint(3, 8)):
        colour = (*rng.choice(_PALETTE), 255)
        ldraw.line(
            (rng.randrange(width), rng.randrange(height), rng.randrange(width), rng.randrange(height)),
            fill=colour,
            width=rng.randint(1, 3),
        )
    shape_colour = rng.choice(_PALETTE)
    timing = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(frames):
            img = Image.new("RGB", (width, height), _tape_frame_colour(i, base_hue))
            img.paste(layer, (0, 0), layer)
            draw = ImageDraw.Draw(img)
            x, y = x + dx, y + dy
            if not 0 <= x <= width - size:
                dx, x = -dx, min(max(x, 0), width - size)
            if not 0 <= y <= height - size:
                dy, y = -dy, min(max(y, 0), height - size)
            fill = tuple((c + 7 * i) % 256 for c in shape_colour)
            draw.ellipse((int(x), int(y), int(x) + size, int(y) + size), fill=fill)
            draw.point((i % width, (i // width) % height), fill=(255, 255, 255))  # a cursor that always moves
            name = f"frame-{i:05d}.png"
            zf.writestr(_zip_info(name, exported_at, False), _png_bytes(img, 1))
            timing.append(
                {"frame": i, "filename": name, "duration": duration, "timestamp": round(i * duration, 3)}
            )
        zf.writestr(_zip_info("timing.json", exported_at, True), json.dumps(timing))
        metadata = {
            "originalSize": {"width": width, "height": height},
            "scaledSize": {"width": width, "height": height},
            "scale": 1,
            "frameCount": frames,
            "totalDuration": round(frames * duration, 3),
            "exportedAt": exported_at.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{exported_at.microsecond // 1000:03d}Z",
        }
        zf.writestr(_zip_info("metadata.json", exported_at, True), json.dumps(metadata))
        if soundtrack:
            zf.writestr(
                _zip_info("soundtrack.wav", exported_at, True),
                sine_wav(frames / fps, rng.choice((220.0, 261.63, 329.63, 440.0))),
            )


def sine_wav(seconds: float, freq: float, rate: int = 22050) -> bytes:
    """A mono 16-bit WAV holding a sine of `freq` Hz for `seconds`."""
    count = round(seconds * rate)
    step = 2 * math.pi * freq / rate
    samples = array.array("h", (int(12000 * math.sin(step * n)) for n in range(count)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- text content

_MOODS = [
    "feeling 🌈 today",
    "so tired 😴",
    "ça va 🙂",
    "日本語のムード",
    "مرحبا بالعالم",
    "👩‍👩‍👧 family day",
    "coding all night ☕️☕️☕️",
    "ok",
    "🔥🔥🔥",
    "Ünïcödé ✨ everywhere",
    "painting wands 🪄",
    "a bit sad, a bit happy 🙃",
    "Ελληνικά!",
    "привет 👋",
    "nothing to report",
    "zalgo t̷e̷x̷t̷",
    "🎹 melody time",
    "rain 🌧️ again",
    "👍🏽 👍🏿",
    "hello\nsecond line",
    "  spaces around  ",
    "emoji flags 🇯🇵🇫🇷",
    "math ∑∫√",
    "done.",
    "🐸",
    "thinking about kidlisp (wipe blue)",
]
_PIECE_WORDS = [
    "wand",
    "starfield",
    "bleep",
    "melody",
    "garden",
    "rain",
    "spiral",
    "tracker",
    "sparkle",
    "metronome",
    "smear",
    "oval",
    "line",
    "noise",
    "orbit",
    "pond",
    "lattice",
    "bloom",
    "drift",
    "echo",
    "field",
    "glyph",
    "loom",
    "mosaic",
    "prism",
    "ripple",
    "swarm",
    "tide",
    "weave",
    "zoom",
]
_KID_FORMS = [
    "(wipe {c})",
    "(ink {c})",
    "(line {n} {n} {n} {n})",
    "(box {n} {n} {n} {n})",
    "(circle {n} {n} {s})",
    "(repeat {s} i (plot i {n}))",
    "(def x {n})",
    "(later {s}s (wipe {c}))",
    "(scroll {s})",
    "(blur 1)",
    "(spin 0.{s})",
    "(zoom 1.0{s})",
    "(ink (? {c} {c}))",
    '(write "hi" {n} {n})',
]
_COLOURS = ["red", "blue", "black", "white", "lime", "purple", "orange", "pink", "yellow", "cyan", "rainbow"]


def _kidlisp_line(rng: random.Random) -> str:
    form = rng.choice(_KID_FORMS)
    while "{" in form:
        form = (
            form.replace("{c}", rng.choice(_COLOURS), 1)
            .replace("{n}", str(rng.randint(0, 255)), 1)
            .replace("{s}", str(rng.randint(1, 9)), 1)
        )
    return form


def make_kidlisp(rng: random.Random, length: int | None = None) -> str:
    """KidLisp source; with `length`, exactly that many (ASCII) characters."""
    if length is None:
        return "\n".join(_kidlisp_line(rng) for _ in range(rng.randint(1, 8)))
    lines: list[str] = []
    total = 0
    while total < length - 80:
        line = _kidlisp_line(rng)
        lines.append(line)
        total += len(line) + 1
    text = "\n".join(lines) + "\n"
    pad = length - len(text)
    return text + ("; " + "~" * (pad - 2) if pad >= 2 else ";" * pad)


# ---------------------------------------------------------------------------------------------- the builder


@dataclass
class _TapeJob:
    path: Path
    width: int
    height: int
    frames: int
    fps: int
    soundtrack: bool
    seed: int
    exported_at: datetime

    def run(self) -> None:
        _run_tape_job(self)

    def cost(self) -> int:
        return self.width * self.height * self.frames


@dataclass
class _PaintingJob:
    path: Path
    width: int
    height: int
    noisy: bool
    seed: int

    def run(self) -> None:
        img = make_painting(self.width, self.height, random.Random(self.seed), self.noisy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(_png_quick(img))

    def cost(self) -> int:
        return self.width * self.height


@dataclass
class _RecordingJob:
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


_MediaJob = _TapeJob | _PaintingJob | _RecordingJob


@dataclass
class _OvenJob:
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


def _write_png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(img))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_quick(img: Image.Image) -> bytes:
    """An 8-bit RGBA PNG without row filters, deflated at level 1: twice as fast to write as Pillow's
    encoder (which tries every filter on every row); pixel art still compresses well (a 1024x768 painting
    20-60 KB instead of about 10 KB). The platform-size dataset writes about 9,000 of them."""
    img = img.convert("RGBA")
    width, height = img.size
    raw = img.tobytes()
    stride = width * 4
    rows = b"".join(b"\x00" + raw[i : i + stride] for i in range(0, len(raw), stride))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8 bits, RGBA, deflate, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 1))
        + _png_chunk(b"IEND", b"")
    )


def _run_jobs(jobs: Sequence[_MediaJob]) -> int:
    for job in jobs:
        job.run()
    return len(jobs)


def _run_media_jobs(jobs: Sequence[_MediaJob], workers: int | None = None) -> None:
    """Write the files: in this process when there are few, else in worker processes (`spawn`: this
    process may have threads running), the costliest jobs first, the small ones in chunks."""
    if workers is None:
        workers = min(MEDIA_WORKERS, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 16:
        _run_jobs(jobs)
        return
    ordered = sorted(jobs, key=lambda job: job.cost(), reverse=True)
    chunks: list[list[_MediaJob]] = []
    for job in ordered:
        if chunks and len(chunks[-1]) < 64 and sum(j.cost() for j in chunks[-1]) + job.cost() <= 4_000_000:
            chunks[-1].append(job)
        else:
            chunks.append([job])
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_run_jobs, chunk) for chunk in chunks]:
            future.result()


@dataclass
class _PendingAccount:
    index: int  # in _Builder.users
    doc: dict[str, Any]
    handle: str
    password: str
    flat: bool
    future: Future[str]


class _Builder:
    def __init__(
        self,
        media_root: Path,
        create_account: CreateAccount,
        size: str,
        seed: int,
        *,
        defer_media: bool = False,
        account_workers: int = ACCOUNT_WORKERS,
        progress: Callable[[str], None] | None = None,
        blobs_url: str = DEFAULT_BLOBS_URL,
    ) -> None:
        self.rng = random.Random(seed)
        self.media_root = media_root
        self.create_account = create_account
        self.size = size
        self.seed = seed
        self.docs: dict[str, list[dict[str, Any]]] = {name: [] for name in COLLECTIONS}
        self.codes: dict[str, set[str]] = {name: set() for name in COLLECTIONS}
        self.slugs: set[str] = set()
        self.whens: set[datetime] = set()
        self.users: list[DemoUser] = []
        self.pds_handles: dict[str, str | None] = {}  # sub -> PDS handle (None: no account)
        self.recordings = 0
        self.tape_jobs: list[_TapeJob] = []
        # With defer_media, paintings and recordings are drawn later from a seed of their own (in worker
        # processes); without it, at once from the builder's random stream (the small and bench datasets).
        self.defer_media = defer_media
        self.media_jobs: list[_PaintingJob | _RecordingJob] = []
        self.failing: set[ObjectId] = set()  # documents whose media is missing or broken on purpose
        self.extra: dict[str, Any] = {}
        self.blobs_url = blobs_url  # the oven's bucket ({key}): where tape documents' `mp4Url` point
        self.oven_jobs: list[_OvenJob] = []  # after the tape ZIPs: they read them
        self.platform_records: list[PlatformRecord] = []
        self.shapes: dict[str, list[dict[str, Any]]] = {
            "wip_paintings": [],
            "sealed_paintings": [],
            "kidlisp_projection_rows": [],
            "platform_tapes": [],
            "orphan_kidlisp_records": [],
        }
        self.progress = progress
        self._account_workers = max(1, account_workers)
        self._account_pool: ThreadPoolExecutor | None = None
        self._accounts: list[_PendingAccount] = []
        self._accounts_done = 0
        self._accounts_lock = threading.Lock()
        self._say_lock = threading.Lock()

    # -- primitives
    def when(self, start: datetime = _EPOCH_START, end: datetime = _EPOCH_END) -> datetime:
        """A random ms-precision datetime, unique across the dataset (slugs are derived from it)."""
        span_ms = int((end - start).total_seconds() * 1000)
        while True:
            value = start + timedelta(milliseconds=self.rng.randrange(span_ms))
            if value not in self.whens:
                self.whens.add(value)
                return value

    def object_id(self, when: datetime) -> ObjectId:
        seconds = int(when.replace(tzinfo=UTC).timestamp())
        return ObjectId(struct.pack(">I", seconds) + self.rng.randbytes(8))

    def code(self, collection: str) -> str:
        taken = self.codes[collection]
        while True:
            value = "".join(self.rng.choices(_CODE_ALPHABET, k=self.rng.randint(3, 5)))
            if value not in taken and not value.isdigit():
                taken.add(value)
                return value

    def random_slug(self) -> str:
        while True:
            value = "".join(self.rng.choices(_ALNUM, k=8))
            if value not in self.slugs:
                self.slugs.add(value)
                return value

    @staticmethod
    def timestamp_slug(when: datetime) -> str:
        return (
            f"{when.year}.{when.month}.{when.day}.{when.hour}.{when.minute:02d}.{when.second:02d}."
            f"{when.microsecond // 1000:03d}"
        )

    def path(self, bucket: str, key: str) -> Path:
        return self.media_root / bucket / key

    def ref(self, collection: str, doc: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        out = {"collection": collection, "_id": str(doc["_id"]), "user": doc.get("user")}
        for name in ("slug", "code", "bucket"):
            if name in doc:
                out[name] = doc[name]
        if key:
            out["key"] = key
        return out

    # -- users
    def sub(self, prefix: str = "auth0|") -> str:
        return prefix + self.rng.randbytes(12).hex()

    def add_user(
        self, ac_handle: str | None, pds_handle: str | None, *, sub: str | None = None, flat: bool = False
    ) -> DemoUser:
        sub = sub or self.sub()
        doc: dict[str, Any] = {"_id": sub, "code": self.code("users")}
        password = None
        if pds_handle:
            password = secrets.token_urlsafe(18)
            future = self._account_executor().submit(self.create_account, pds_handle, password)
            future.add_done_callback(self._account_done)
            self._accounts.append(_PendingAccount(len(self.users), doc, pds_handle, password, flat, future))
        self.docs["users"].append(doc)
        self.pds_handles[sub] = pds_handle
        if ac_handle:
            self.docs["@handles"].append({"_id": sub, "handle": ac_handle})
        # The DID is filled in by finish_accounts, once the PDS has answered.
        user = DemoUser(sub=sub, ac_handle=ac_handle, pds_handle=pds_handle, password=password)
        self.users.append(user)
        return user

    def say(self, message: str) -> None:
        if self.progress:
            with self._say_lock:  # account threads report too: one line at a time
                self.progress(message)

    @property
    def account_workers(self) -> int:
        return self._account_workers

    @property
    def accounts_pending(self) -> int:
        return len(self._accounts)

    def _account_executor(self) -> ThreadPoolExecutor:
        if self._account_pool is None:
            self._account_pool = ThreadPoolExecutor(
                self._account_workers, thread_name_prefix="create-account"
            )
        return self._account_pool

    def _account_done(self, future: Future[str]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with self._accounts_lock:
            self._accounts_done += 1
            done = self._accounts_done
        if done % 100 == 0:
            self.say(f"  {done} accounts created")

    def finish_accounts(self) -> None:
        """Wait for every account, then write each DID into its user's document and DemoUser. The first
        failure cancels the accounts not yet started and is raised."""
        try:
            for pending in self._accounts:
                did = pending.future.result()
                created = datetime.now(UTC).replace(tzinfo=None)
                created = created.replace(microsecond=created.microsecond // 1000 * 1000)
                if pending.flat:
                    pending.doc.update(
                        atproto_did=did, atproto_handle=pending.handle, atproto_password=pending.password
                    )
                else:
                    pending.doc["atproto"] = {
                        "did": did,
                        "handle": pending.handle,
                        "password": pending.password,
                        "createdAt": created,
                    }
                self.users[pending.index] = replace(self.users[pending.index], did=did)
        finally:
            self.close()
        by_sub = {user.sub: user for user in self.users}
        for key, value in self.extra.items():
            if isinstance(value, DemoUser):
                self.extra[key] = by_sub[value.sub]
        for record in self.platform_records:
            record.did = by_sub[record.owner].did

    def close(self) -> None:
        """Stop the account threads (waiting for the calls in flight; the others are cancelled)."""
        if self._account_pool is not None:
            self._account_pool.shutdown(wait=True, cancel_futures=True)
            self._account_pool = None

    def media_count(self) -> dict[str, int]:
        paintings = sum(isinstance(job, _PaintingJob) for job in self.media_jobs)
        return {
            "paintings": paintings,
            "recordings": len(self.media_jobs) - paintings,
            "tapes": len(self.tape_jobs),
        }

    def add_art_guest(self) -> DemoUser:
        return self.add_user(None, ART_GUEST_HANDLE, sub=ART_GUEST_SUB)

    # -- media documents
    def add_painting(
        self,
        user: str | None,
        size: tuple[int, int],
        *,
        recording: bool = False,
        nuked: bool = False,
        write_image: bool = True,
        noisy: bool = False,
        null_user: bool = False,
        when: datetime | None = None,
    ) -> dict[str, Any]:
        when = when or self.when()
        bucket = USER_BUCKET if user else ART_BUCKET
        if user:
            slug = self.timestamp_slug(when)
        else:
            slug = self.random_slug()
            if recording:
                slug = f"{slug}:{self.random_slug()}"
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("paintings"),
            "slug": slug,
            "when": when,
            "bucket": bucket,
        }
        if user:
            doc["user"] = user
        elif null_user:
            doc["user"] = None
        if nuked:
            doc["nuked"] = True
        self.docs["paintings"].append(doc)
        width, height = size
        if write_image:
            target = self.path(bucket, painting_key(slug, user))
            if self.defer_media:
                self.media_jobs.append(_PaintingJob(target, width, height, noisy, self.rng.randrange(2**32)))
            else:
                _write_png(target, make_painting(width, height, self.rng, noisy=noisy))
        else:
            self.failing.add(doc["_id"])
        if recording:
            target = self.path(bucket, zip_key(recording_slug(slug), user))
            rec_width, rec_height, steps = min(width, 128), min(height, 128), self.rng.randint(2, 5)
            if self.defer_media:
                self.media_jobs.append(
                    _RecordingJob(target, rec_width, rec_height, steps, self.rng.randrange(2**32), when)
                )
            else:
                build_recording_zip(target, rec_width, rec_height, steps, self.rng, when)
            self.recordings += 1
        return doc

    def add_mood(
        self, user: str, text: str, *, deleted: bool = False, when: datetime | None = None
    ) -> dict[str, Any]:
        when = when or self.when()
        doc: dict[str, Any] = {"_id": self.object_id(when), "user": user, "mood": text, "when": when}
        if deleted:
            doc["deleted"] = True
        self.docs["moods"].append(doc)
        return doc

    def add_piece(self, user: str | None, slug: str, *, nuked: bool = False) -> dict[str, Any]:
        when = self.when()
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("pieces"),
            "slug": slug,
            "when": when,
            "bucket": USER_BUCKET if user else ART_BUCKET,
        }
        if user:
            doc["user"] = user
        if nuked:
            doc["nuked"] = True
        self.docs["pieces"].append(doc)
        return doc

    def add_kidlisp(self, user: str | None, source: str, *, null_user: bool = False) -> dict[str, Any]:
        when = self.when()
        accessed = when + timedelta(milliseconds=self.rng.randrange(1, 90 * 86_400_000))
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("kidlisp"),
            "source": source,
            "hash": hashlib.sha256(source.encode()).hexdigest(),
            "when": when,
            "hits": self.rng.randint(0, 500),
            "lastAccessed": accessed,
        }
        if user:
            doc["user"] = user
        elif null_user:
            doc["user"] = None
        self.docs["kidlisp"].append(doc)
        return doc

    def add_news(
        self,
        user: str | None,
        title: str,
        *,
        text: str | None = None,
        url: str | None = None,
        dead: bool = False,
        from_bluesky: bool = False,
    ) -> dict[str, Any]:
        """A news post as the platform's news-api stores it; `from_bluesky`: a post its Bluesky ingest
        copied in (no `user`, an `external` source, `atproto` pointing at the original app.bsky post)."""
        when = self.when()
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": ("n" if from_bluesky else "") + self.code("news-posts"),
            "title": title,
            "user": user,
            "when": when,
            "updated": when,
            "score": self.rng.randint(1, 40),
            "commentCount": self.rng.randint(0, 6),
            "status": "dead" if dead else "live",
        }
        if text is not None:
            doc["text"] = text
        if url is not None:
            doc["url"] = url
        if from_bluesky:
            did, rkey = "did:plc:artistnewsnetwork00000000", self.random_slug().lower()
            uri = f"at://{did}/app.bsky.feed.post/{rkey}"
            doc["external"] = {"source": "bsky", "did": did, "postUri": uri, "postedAt": when}
            doc["atproto"] = {"did": did, "uri": uri, "rkey": rkey}
        self.docs["news-posts"].append(doc)
        return doc

    def add_tape(
        self,
        user: str | None,
        size: tuple[int, int],
        frames: int,
        *,
        fps: int = 30,
        soundtrack: bool = False,
        nuked: bool = False,
        zip_state: str = "ok",
        when: datetime | None = None,
    ) -> dict[str, Any]:
        """zip_state: "ok", "missing" (no file) or "broken" (truncated file)."""
        when = when or self.when()
        slug = self.random_slug()
        bucket = USER_BUCKET if user else ART_BUCKET
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("tapes"),
            "slug": slug,
            "when": when,
            "bucket": bucket,
            "nuked": nuked,
        }
        if user:
            doc["user"] = user
        if self.rng.random() < 0.3:
            doc["mp4Status"] = "pending"
        self.docs["tapes"].append(doc)
        target = self.path(bucket, zip_key(slug, user))
        job = _TapeJob(target, size[0], size[1], frames, fps, soundtrack, self.rng.randrange(2**32), when)
        if zip_state == "ok":
            self.tape_jobs.append(job)
            return doc
        self.failing.add(doc["_id"])
        if zip_state == "broken":
            _run_tape_job(job)
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 3])
        return doc

    # -- the platform's newer shapes (spec: "Since mid-2026")
    def nanoid(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(_NANOID, k=self.rng.randint(low, high)))

    def platform_record(
        self, owner: str, collection: str, value: dict[str, Any], **fields: Any
    ) -> PlatformRecord:
        handle = self.pds_handles.get(owner)
        assert handle, f"a platform record needs an account: {owner} has none"
        record = PlatformRecord(owner, handle, collection, value, **fields)
        self.platform_records.append(record)
        return record

    def _state_file(self, width: int, height: int, layers: int, saved: datetime) -> tuple[ObjectId, str]:
        """The editor's saved state in GridFS (`painting-states`, one gzipped JSON file): its file id (what
        `wip.snapshot` holds) and the sha256 of its bytes (`wip.hash`)."""
        state = {
            "version": 1,
            "width": width,
            "height": height,
            "layers": [{"index": i, "pixels": self.rng.randbytes(24).hex()} for i in range(layers)],
        }
        data = gzip.compress(json.dumps(state).encode(), mtime=0)
        file_id = self.object_id(saved)
        self.docs[STATE_FILES].append(
            {
                "_id": file_id,
                "length": len(data),
                "chunkSize": GRIDFS_CHUNK,
                "uploadDate": saved,
                "filename": "painting-state.json.gz",
                "metadata": {"createdAt": saved},
            }
        )
        self.docs[STATE_CHUNKS].append(
            {"_id": self.object_id(saved), "files_id": file_id, "n": 0, "data": data}
        )
        return file_id, hashlib.sha256(data).hexdigest()

    def _wip(
        self, when: datetime, size: tuple[int, int], saves: int, layers: int
    ) -> tuple[dict[str, Any], datetime]:
        """The `wip` sub-document as `painting-wips.mjs` leaves it after `saves` saves (the last with
        `layers` layers), and the time of the last save. Each save replaces the whole sub-document:
        revision + 1, the new state file as `snapshot` (the previous one deleted), its `hash`, `steps`
        (layers beyond the first); `expiresAt` goes once there is a step."""
        width, height = size
        key = self.nanoid(43, 64)  # the editor's capability key: only its hash is stored
        wip: dict[str, Any] = {
            "id": self.nanoid(21, 32),
            "editorHash": hashlib.sha256(key.encode()).hexdigest(),
            "revision": 0,
            "steps": 0,
            "width": width,
            "height": height,
            "initialLayers": 1,
            "parent": None,
            "expiresAt": when + timedelta(hours=1),
            "snapshot": None,
        }
        saved = when
        if saves:
            saved = when + timedelta(milliseconds=self.rng.randrange(60_000, 3 * 3_600_000))
            snapshot, digest = self._state_file(width, height, layers, saved)
            steps = max(0, layers - wip["initialLayers"])
            wip.update(revision=saves, snapshot=snapshot, hash=digest, steps=steps)
            if steps > 0:
                del wip["expiresAt"]
        return wip, saved

    def add_wip_painting(
        self, user: str | None, size: tuple[int, int], *, saves: int = 0, layers: int = 1
    ) -> dict[str, Any]:
        """A painting in progress as the editor inserts it (then saved `saves` times): `slug: "wip/<id>"`,
        `status: "wip"`, no `user` for a guest, and no PNG anywhere (its state is in GridFS)."""
        when = self.when(_SHAPES_START, _SHAPES_END)
        wip, saved = self._wip(when, size, saves, layers)
        doc: dict[str, Any] = {
            "_id": self.object_id(when),
            "code": self.code("paintings"),
            "slug": f"wip/{wip['id']}",
            "status": WIP_STATUS,
            "when": when,
            "updatedAt": saved,
            "bucket": USER_BUCKET if user else ART_BUCKET,
        }
        if user:
            doc["user"] = user
        doc["wip"] = wip
        self.docs["paintings"].append(doc)
        extra = {"steps": wip["steps"], "empty": wip["steps"] == 0}
        self.shapes["wip_paintings"].append(self.ref("paintings", doc) | extra)
        return doc

    def add_sealed_painting(self, user: str | None, size: tuple[int, int], *, layers: int) -> dict[str, Any]:
        """A painting in progress its owner finished ("Done"): `status: "done"`, the real slug, `completedAt`,
        the `wip` sub-document kept without `expiresAt`, the PNG in storage: a painting like any other."""
        when = self.when(_SHAPES_START, _SHAPES_END)
        doc = self.add_painting(user, size, when=when)  # the slug and the PNG, as every painting has them
        wip, saved = self._wip(when, size, self.rng.randint(1, 9), layers)
        wip.pop("expiresAt", None)
        completed = saved + timedelta(milliseconds=self.rng.randrange(1_000, 600_000))
        sealed = {
            "_id": doc["_id"],
            "code": doc["code"],
            "slug": doc["slug"],
            "status": DONE_STATUS,
            "when": when,
            "updatedAt": completed,
            "bucket": doc["bucket"],
            **({"user": user} if user else {}),
            "wip": wip,
            "completedAt": completed,
        }
        doc.clear()
        doc.update(sealed)  # in place: the builder holds this dict
        self.shapes["sealed_paintings"].append(self.ref("paintings", doc, painting_key(doc["slug"], user)))
        return doc

    def add_kidlisp_projection(
        self, user: str | None, source: str, *, platform_record: bool, backfilled: bool = False
    ) -> dict[str, Any]:
        """A KidLisp identity row as `kidlisp-projection.mjs` upserts it (`user: null` for a guest; no
        `hits`, `lastAccessed` or `atproto`), and with `platform_record` the record the platform wrote for
        the piece (no `ref`; its rkey kept in the platform's store, never in MongoDB). A `backfilled` row came
        from `kidlisp-backfill.mjs` later: its `_id` is of that time, its `when` the piece's."""
        when = self.when(_SHAPES_START, _SHAPES_END)
        inserted = when
        if backfilled:
            span_ms = int((_BACKFILL_END - _BACKFILL_START).total_seconds() * 1000)
            inserted = _BACKFILL_START + timedelta(milliseconds=self.rng.randrange(span_ms))
        source = source.strip()
        doc: dict[str, Any] = {
            "_id": self.object_id(inserted),
            "code": self.code("kidlisp"),
            "source": source,
            "hash": hashlib.sha256(source.encode()).hexdigest(),
            "when": when,
            "user": user or None,
        }
        self.docs["kidlisp"].append(doc)
        if platform_record:
            value = _platform_kidlisp(doc["code"], source, when)
            self.platform_record(
                user or ART_GUEST_SUB, KIDLISP_NSID, value, source="kidlisp", ref=str(doc["_id"])
            )
        extra = {"platform_record": platform_record, "backfilled": backfilled}
        self.shapes["kidlisp_projection_rows"].append(self.ref("kidlisp", doc) | extra)
        return doc

    def add_orphan_kidlisp_record(self, user: str) -> PlatformRecord:
        """A record the platform wrote for a piece that exists only in its own store: no row in MongoDB has
        its code (the code is taken here, so none ever will)."""
        when = self.when(_SHAPES_START, _SHAPES_END)
        code = self.code("kidlisp")
        record = self.platform_record(
            user, KIDLISP_NSID, _platform_kidlisp(code, make_kidlisp(self.rng), when)
        )
        self.shapes["orphan_kidlisp_records"].append({"code": code, "owner": user, "handle": record.handle})
        return record

    def add_platform_tape(
        self, user: str | None, size: tuple[int, int], frames: int, *, fps: int = 30
    ) -> dict[str, Any]:
        """A tape the oven baked (`mp4Status: "complete"`, its MP4 and poster frame in the oven's bucket) and
        that `tape-atproto.mjs` then linked: a record with the oven's MP4 as `video` (no thumbnail, no
        zipUrl), the link in the document's `at` (no `atproto`), both made after seeding."""
        doc = self.add_tape(user, size, frames, fps=fps, when=self.when(_SHAPES_START, _SHAPES_END))
        code = doc["code"]
        mp4_key = f"tapes/{code}.mp4"
        doc.pop("mp4Status", None)
        doc.update(kind="zip", mp4Status="complete", mp4Url=self.blobs_url.format(key=mp4_key))
        mp4 = self.path(BLOBS_BUCKET, mp4_key)
        thumbnail = self.path(BLOBS_BUCKET, f"tapes/{code}-thumb.jpg")
        self.oven_jobs.append(
            _OvenJob(self.path(doc["bucket"], zip_key(doc["slug"], user)), mp4, thumbnail, fps)
        )
        value = {
            "$type": TAPE_NSID,
            "slug": doc["slug"],
            "code": code,
            "acUrl": f"{AC}/!{code}",
            "when": _iso(doc["when"]),
            "ref": str(doc["_id"]),
        }
        blobs = {"video": {"path": str(mp4), "mime_type": "video/mp4"}}
        owner = user or ART_GUEST_SUB
        self.platform_record(
            owner, TAPE_NSID, value, blobs=blobs, source="tapes", ref=str(doc["_id"]), link="at"
        )
        ref = self.ref("tapes", doc, zip_key(doc["slug"], user)) | {"mp4_key": mp4_key}
        self.shapes["platform_tapes"].append(ref)
        return doc

    def painting_size(self) -> tuple[int, int]:
        return self.rng.choice(
            [
                (32, 32),
                (64, 48),
                (128, 128),
                (100, 100),
                (160, 120),
                (256, 256),
                (300, 200),
                (400, 300),
                (512, 512),
                (640, 480),
                (800, 600),
                (1024, 768),
            ]
        )

    def tape_size(self) -> tuple[int, int]:
        return self.rng.choice([(128, 128), (160, 120), (192, 144), (200, 200), (256, 192), (320, 240)])


def _iso(when: datetime) -> str:
    """A naive UTC datetime as the platform's `Date.toISOString()` writes it: milliseconds and `Z`."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _platform_kidlisp(code: str, source: str, when: datetime) -> dict[str, Any]:
    """The record the platform writes for a piece saved in its own store (`media-atproto.mjs` from the
    store's `{code, source, hash, when, user}`, which has no `_id`: so no `ref`)."""
    return {
        "$type": KIDLISP_NSID,
        "code": code,
        "source": source,
        "acUrl": f"{AC}/${code}",
        "when": _iso(when),
    }


def _run_tape_job(job: _TapeJob) -> None:
    build_tape_zip(
        job.path,
        job.width,
        job.height,
        job.frames,
        job.fps,
        job.soundtrack,
        random.Random(job.seed),
        job.exported_at,
    )


# ---------------------------------------------------------------------------------------------- scenarios


def _small(b: _Builder) -> None:
    rng = b.rng
    jeffrey = b.add_user("jeffrey", "jeffrey.at.aesthetic.computer")
    fifi = b.add_user("fifi", "fifi.at.aesthetic.computer", sub=b.sub("sotce-"))
    old = b.add_user("oldtimer", "oldtimer.pds.aesthetic.computer", flat=True)  # stale domain, flat fields
    lurker = b.add_user("lurker", None)
    b.add_art_guest()
    b.extra["flat_fields_user"] = old
    b.extra["user_without_account"] = lurker

    # Paintings: every size at least once, across users.
    sizes = [(32, 32), (64, 48), (128, 128), (300, 200), (1024, 768), (640, 480), (100, 100), (512, 512)]
    for i, size in enumerate(sizes):
        b.add_painting(jeffrey.sub, size, recording=i == 2)
    large = b.add_painting(jeffrey.sub, (1024, 768), noisy=True)
    b.extra["large_painting"] = b.ref("paintings", large, painting_key(large["slug"], large["user"]))
    b.add_painting(jeffrey.sub, (64, 64), nuked=True)
    missing = b.add_painting(jeffrey.sub, (128, 96), write_image=False)
    b.extra["missing_image_painting"] = b.ref(
        "paintings", missing, painting_key(missing["slug"], missing["user"])
    )
    for size in [(80, 60), (256, 256)]:
        b.add_painting(fifi.sub, size)
    b.add_painting(old.sub, (48, 48))
    for size in [(64, 64), (200, 150)]:
        b.add_painting(lurker.sub, size)
    for i, size in enumerate([(32, 32), (128, 128), (300, 200), (160, 120), (96, 96), (720, 540)]):
        b.add_painting(None, size, recording=i < 3)
    b.add_painting(None, (64, 64), nuked=True, recording=True)
    null_doc = b.add_painting(None, (48, 32), null_user=True)
    b.extra["null_user_painting"] = b.ref("paintings", null_doc, painting_key(null_doc["slug"], None))

    # Moods: Unicode and emoji, some deleted, two sharing one `when`.
    texts = list(_MOODS)
    rng.shuffle(texts)
    for i, text in enumerate(texts[:8]):
        b.add_mood(jeffrey.sub, text, deleted=i in (3, 6))
    long_text = ("a long mood that goes on " * 200)[:4_900] + " 🌊"
    b.add_mood(jeffrey.sub, long_text)
    shared = b.when()
    pair = [
        b.add_mood(fifi.sub, "twin mood one 👯", when=shared),
        b.add_mood(fifi.sub, "twin mood two 👯", when=shared),
    ]
    b.extra["same_when_moods"] = [str(doc["_id"]) for doc in pair]
    for text in texts[8:11]:
        b.add_mood(fifi.sub, text)
    b.add_mood(old.sub, texts[11])
    b.add_mood(old.sub, texts[12], deleted=True)
    for text in texts[13:15]:
        b.add_mood(lurker.sub, text)

    # Pieces.
    for slug in ("wand", "starfield", "bleep-remix"):
        b.add_piece(jeffrey.sub, slug)
    b.add_piece(jeffrey.sub, "oops", nuked=True)
    b.add_piece(fifi.sub, "garden")
    b.add_piece(old.sub, "metronome")
    b.add_piece(None, "sketch")

    # KidLisp: short ones, one close to the 50,000 limit, some anonymous.
    for _ in range(5):
        b.add_kidlisp(jeffrey.sub, make_kidlisp(rng))
    long_doc = b.add_kidlisp(jeffrey.sub, make_kidlisp(rng, KIDLISP_MAX - rng.randint(10, 99)))
    b.extra["long_kidlisp"] = b.ref("kidlisp", long_doc) | {"length": len(long_doc["source"])}
    b.add_kidlisp(jeffrey.sub, "(wipe rainbow) ; 🌈 unicode in code")
    b.add_kidlisp(fifi.sub, make_kidlisp(rng))
    b.add_kidlisp(lurker.sub, make_kidlisp(rng))
    for _ in range(3):
        b.add_kidlisp(None, make_kidlisp(rng))
    b.add_kidlisp(None, make_kidlisp(rng), null_user=True)

    # Tapes: small canvases, one with a soundtrack, anonymous ones, nuked, missing and broken ZIPs.
    sound = b.add_tape(jeffrey.sub, (128, 128), 45, fps=30, soundtrack=True)
    b.extra["soundtrack_tape"] = b.ref("tapes", sound, zip_key(sound["slug"], sound["user"]))
    b.add_tape(fifi.sub, (160, 120), 60, fps=60)
    b.add_tape(None, (128, 96), 36, fps=24)
    b.add_tape(None, (96, 96), 30, fps=30)
    b.add_tape(None, (64, 64), 20, nuked=True)
    gone = b.add_tape(jeffrey.sub, (128, 128), 30, zip_state="missing")
    b.extra["missing_zip_tape"] = b.ref("tapes", gone, zip_key(gone["slug"], gone["user"]))
    broken = b.add_tape(None, (128, 128), 30, zip_state="broken")
    b.extra["broken_zip_tape"] = b.ref("tapes", broken, zip_key(broken["slug"], None))
    _news_posts(b, jeffrey, fifi, old, lurker)
    _small_platform_shapes(b, jeffrey)  # last: everything above stays as it was before these shapes


def _small_platform_shapes(b: _Builder, jeffrey: DemoUser) -> None:
    """The platform's newer shapes, each once: paintings in progress (an empty one that expires, a saved
    one, a guest's), sealed ones (a user's and a guest's), KidLisp projection rows (three with the record
    the platform wrote, one backfilled; one without; a guest's with its record in the art account), a
    record of a piece MongoDB has no row for, and a tape the oven baked and the platform linked under `at`."""
    rng = b.rng
    b.add_wip_painting(jeffrey.sub, (128, 128))  # just started: nothing saved, expires in an hour
    b.add_wip_painting(jeffrey.sub, (256, 256), saves=3, layers=4)
    b.add_wip_painting(None, (64, 64), saves=1, layers=2)
    b.add_sealed_painting(jeffrey.sub, (200, 150), layers=5)
    b.add_sealed_painting(None, (96, 96), layers=3)
    for i in range(3):
        b.add_kidlisp_projection(jeffrey.sub, make_kidlisp(rng), platform_record=True, backfilled=i == 2)
    b.add_kidlisp_projection(jeffrey.sub, make_kidlisp(rng), platform_record=False)  # its record failed
    b.add_kidlisp_projection(None, make_kidlisp(rng), platform_record=True)
    b.add_orphan_kidlisp_record(jeffrey.sub)
    b.add_platform_tape(jeffrey.sub, (128, 96), 30, fps=30)


# The platform's real scale (spec: "Scale of the real data").
PLATFORM_USERS = 4_201  # art-guest not counted
PLATFORM_ACCOUNTS = 978  # users with a PDS account (art-guest not counted)
PLATFORM_STALE_HANDLES = 5  # accounts still named NAME.pds.aesthetic.computer
PLATFORM_FLAT_USERS = 8  # accounts stored in the older flat atproto_* fields
HEAVY_COUNTS = {"paintings": 395, "moods": 226, "pieces": 26, "kidlisp": 2_220, "tapes": 0}
ANONYMOUS_PAINTINGS = 1_064
ANONYMOUS_RECORDINGS = 529
ANONYMOUS_TAPES = 32
ANONYMOUS_KIDLISP = 180
ANONYMOUS_PIECES = 14
PLATFORM_NEWS_AUTHORS = 40
PLATFORM_NEWS_FROM_BLUESKY = 60
# The newer shapes: (users with accounts, users without, guests) for paintings in progress and sealed ones
PLATFORM_WIP_PAINTINGS = (24, 4, 8)
PLATFORM_SEALED_PAINTINGS = (20, 4, 6)
PLATFORM_KIDLISP_PROJECTION = 408  # "408 pieces were missing from MongoDB until a backfill"
PLATFORM_KIDLISP_OWNERS = 140
PLATFORM_ORPHAN_KIDLISP = 6
PLATFORM_LINKED_TAPES = 3

_HEAVY_SIZES = [
    (32, 32),
    (64, 48),
    (64, 64),
    (100, 100),
    (128, 128),
    (160, 120),
    (200, 150),
    (256, 256),
    (300, 200),
    (400, 300),
    (512, 512),
    (640, 480),
    (800, 600),
    (1024, 768),
]
_HEAVY_WEIGHTS = [6, 6, 8, 8, 12, 10, 8, 10, 10, 6, 5, 4, 2, 1]

# Everyone else: per collection, (share of users with any, median count of those, log-normal sigma, cap),
# scaled by a per-user activity factor, so most users have a handful of items and a few have hundreds.
_ITEMS_WITH_ACCOUNT = {
    "paintings": (0.62, 4, 1.1, 400),
    "moods": (0.55, 3, 1.0, 300),
    "pieces": (0.07, 2, 0.8, 40),
    "kidlisp": (0.35, 6, 1.4, 1_500),
}
_ITEMS_WITHOUT_ACCOUNT = {
    "paintings": (0.22, 2, 0.9, 120),
    "moods": (0.2, 2, 0.9, 80),
    "pieces": (0.01, 1, 0.5, 5),
    "kidlisp": (0.1, 3, 1.0, 200),
}
_TAPE_SHARE = {True: 0.02, False: 0.0015}  # users with tapes (1 to 3 each), with and without an account
_RECORDING_RATE = 0.08  # user paintings with a recording ZIP
_NUKE_RATE = {"paintings": 0.03, "pieces": 0.05, "tapes": 0.06}
_DELETE_RATE = 0.04  # moods
_LONG_KIDLISP_RATE = 0.003  # sources of 5,000 characters or more

_ONSETS = ("b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "ch", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "i", "o", "ee", "oo", "ai")
_CODAS = ("", "", "", "", "n", "r", "l", "x", "s", "k", "m", "y")


# Names the reference PDS refuses for a handle (`HandleNotAvailable`) that the generator below can spell:
# its reserved subdomains of that shape (@atproto/pds, handle/reserved.ts), and the one slur it can form.
_PDS_REFUSED = frozenset((
    "base", "beta", "bin", "book", "buy", "data", "delete", "demo", "devel", "dir", "domain", "donate",
    "file", "files", "forum", "fun", "game", "games", "general", "goto", "hikakin", "home", "java",
    "kaka", "kike", "kikes", "legal", "lex", "linux", "login", "mail", "mailer", "main", "mainichi",
    "manage", "manager", "mine", "mis", "mobile", "model", "money", "name", "nan", "nasa", "navi",
    "nike", "nil", "none", "notes", "page", "pager", "pages", "panel", "pay", "popular", "potus",
    "remove", "repo", "rule", "sale", "sales", "save", "shakira", "share", "site", "sites", "todo",
    "tool", "tos", "tux", "ver", "visitor", "wave", "wifi", "wiki", "wikis", "win",
))  # fmt: skip


def _user_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` distinct handle names (3 to 14 of [a-z0-9], valid PDS handle labels), none in `taken` and
    none the PDS refuses."""
    seen = set(taken) | _PDS_REFUSED
    names: list[str] = []
    while len(names) < count:
        syllables = rng.choice((1, 2, 2, 2, 3))
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        name += rng.choice(_CODAS)
        if rng.random() < 0.25:
            name += str(rng.randint(1, 999))
        if 3 <= len(name) <= 14 and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _mood_text(rng: random.Random) -> str:
    return rng.choice(_MOODS) + rng.choice(("", "", " 🙂", " !", " ..."))


def _piece_slug(rng: random.Random) -> str:
    slug = rng.choice(_PIECE_WORDS)
    kind = rng.random()
    if kind < 0.3:
        slug += "-" + rng.choice(_PIECE_WORDS)
    elif kind < 0.45:
        slug += str(rng.randint(2, 99))
    return slug


def _heavy_user(b: _Builder, sub: str) -> None:
    """The heavy user's real counts (HEAVY_COUNTS): 395 paintings (every tenth with a recording), 226
    moods, 26 pieces, 2,220 kidlisp (six of them 5,000 characters or more); nothing removed, no tapes."""
    rng = b.rng
    for i in range(HEAVY_COUNTS["paintings"]):
        b.add_painting(sub, rng.choices(_HEAVY_SIZES, _HEAVY_WEIGHTS)[0], recording=i % 10 == 0)
    for _ in range(HEAVY_COUNTS["moods"]):
        b.add_mood(sub, _mood_text(rng))
    names = list(_PIECE_WORDS)
    rng.shuffle(names)
    for name in names[: HEAVY_COUNTS["pieces"]]:
        b.add_piece(sub, name)
    kidlisp = HEAVY_COUNTS["kidlisp"]
    long_at = set(rng.sample(range(kidlisp), 6))
    for i in range(kidlisp):
        length = rng.randint(5_000, KIDLISP_MAX - 10) if i in long_at else None
        b.add_kidlisp(sub, make_kidlisp(rng, length))


def _anonymous_tapes(b: _Builder, count: int) -> None:
    """Anonymous tapes of 60 to 300 frames, a quarter with a soundtrack."""
    rng = b.rng
    for _ in range(count):
        b.add_tape(
            None,
            b.tape_size(),
            rng.randint(60, 300),
            fps=rng.choice((24, 30, 30, 60)),
            soundtrack=rng.random() < 0.25,
        )


def _bench(b: _Builder) -> None:
    jeffrey = b.add_user("jeffrey", "jeffrey.at.aesthetic.computer")
    b.add_art_guest()
    _heavy_user(b, jeffrey.sub)
    _anonymous_tapes(b, ANONYMOUS_TAPES)


def _item_counts(rng: random.Random, with_account: bool) -> dict[str, int]:
    profile = _ITEMS_WITH_ACCOUNT if with_account else _ITEMS_WITHOUT_ACCOUNT
    activity = rng.lognormvariate(0.0, 0.5)
    counts = {}
    for name, (share, median, sigma, cap) in profile.items():
        count = 0
        if rng.random() < share:
            count = min(cap, max(1, round(rng.lognormvariate(math.log(median * activity), sigma))))
        counts[name] = count
    counts["tapes"] = rng.choices((1, 2, 3), (6, 3, 1))[0] if rng.random() < _TAPE_SHARE[with_account] else 0
    return counts


def _user_items(b: _Builder, sub: str, counts: dict[str, int]) -> None:
    rng = b.rng
    for _ in range(counts["paintings"]):
        nuked = rng.random() < _NUKE_RATE["paintings"]
        b.add_painting(sub, b.painting_size(), recording=rng.random() < _RECORDING_RATE, nuked=nuked)
    for _ in range(counts["moods"]):
        b.add_mood(sub, _mood_text(rng), deleted=rng.random() < _DELETE_RATE)
    for _ in range(counts["pieces"]):
        b.add_piece(sub, _piece_slug(rng), nuked=rng.random() < _NUKE_RATE["pieces"])
    for _ in range(counts["kidlisp"]):
        length = rng.randint(5_000, KIDLISP_MAX - 10) if rng.random() < _LONG_KIDLISP_RATE else None
        b.add_kidlisp(sub, make_kidlisp(rng, length))
    for _ in range(counts["tapes"]):
        nuked = rng.random() < _NUKE_RATE["tapes"]
        frames, fps = rng.randint(30, 90), rng.choice((24, 30, 30, 60))
        b.add_tape(sub, b.tape_size(), frames, fps=fps, soundtrack=rng.random() < 0.2, nuked=nuked)


def _platform(b: _Builder) -> None:
    """The platform at its real scale: 4,201 users, 978 of them with a PDS account (5 stale handles, 8 in
    flat fields), the heavy user's exact counts, 1,064 anonymous paintings (529 with recordings) and 32
    anonymous tapes; everyone else a heavy-tailed handful; removed items at a few percent; and every edge
    case of `small`."""
    rng = b.rng
    names = iter(_user_names(rng, PLATFORM_USERS, {"jeffrey", "fifi", "oldtimer", "lurker", "art"}))

    # Users first: every handle and password is decided now and the accounts are created in the
    # background (the builder's threads) while the items and media files are made.
    jeffrey = b.add_user("jeffrey", "jeffrey.at.aesthetic.computer")
    fifi = b.add_user("fifi", "fifi.at.aesthetic.computer", sub=b.sub("sotce-"))
    old = b.add_user("oldtimer", "oldtimer.pds.aesthetic.computer", flat=True)  # stale domain, flat fields
    lurker = b.add_user("lurker", None)
    b.add_art_guest()
    b.extra["flat_fields_user"] = old
    b.extra["user_without_account"] = lurker
    others = PLATFORM_USERS - 4
    accounted = sorted(rng.sample(range(others), PLATFORM_ACCOUNTS - 3))
    stale = set(rng.sample(accounted, PLATFORM_STALE_HANDLES - 1))
    plain = [i for i in accounted if i not in stale]
    flat = {min(stale), *rng.sample(plain, PLATFORM_FLAT_USERS - 2)}
    with_account = set(accounted)
    population: list[tuple[DemoUser, bool]] = [(fifi, True), (old, True), (lurker, False)]
    for i in range(others):
        account = i in with_account
        sub = b.sub("sotce-") if rng.random() < 0.03 else b.sub()
        name = next(names) if account or rng.random() < 0.7 else None  # not every user picked a handle
        domain = ".pds.aesthetic.computer" if i in stale else ".at.aesthetic.computer"
        user = b.add_user(name, f"{name}{domain}" if account else None, sub=sub, flat=i in flat)
        population.append((user, account))
    b.say(
        f"creating {b.accounts_pending} accounts on the PDS ({b.account_workers} at a time) while the "
        "documents and media files are made ..."
    )

    # Items: the heavy user, then everyone else from a heavy-tailed profile.
    _heavy_user(b, jeffrey.sub)
    for user, account in population:
        counts = _item_counts(rng, account)
        if user in (fifi, old, lurker):  # the named users always have something to show
            counts["paintings"] = max(counts["paintings"], 2)
            counts["moods"] = max(counts["moods"], 2)
        _user_items(b, user.sub, counts)

    # The edge cases of `small`, owned by users with accounts (the heavy user keeps his exact counts).
    large = b.add_painting(fifi.sub, (1024, 768), noisy=True)
    b.extra["large_painting"] = b.ref("paintings", large, painting_key(large["slug"], large["user"]))
    missing = b.add_painting(fifi.sub, (128, 96), write_image=False)
    b.extra["missing_image_painting"] = b.ref(
        "paintings", missing, painting_key(missing["slug"], missing["user"])
    )
    b.add_mood(fifi.sub, ("a long mood that goes on " * 200)[:4_900] + " 🌊")
    shared = b.when()
    pair = [
        b.add_mood(fifi.sub, "twin mood one 👯", when=shared),
        b.add_mood(fifi.sub, "twin mood two 👯", when=shared),
    ]
    b.extra["same_when_moods"] = [str(doc["_id"]) for doc in pair]
    long_doc = b.add_kidlisp(fifi.sub, make_kidlisp(rng, KIDLISP_MAX - rng.randint(10, 99)))
    b.extra["long_kidlisp"] = b.ref("kidlisp", long_doc) | {"length": len(long_doc["source"])}
    b.add_kidlisp(fifi.sub, "(wipe rainbow) ; 🌈 unicode in code")
    sound = b.add_tape(fifi.sub, (128, 128), 45, fps=30, soundtrack=True)
    b.extra["soundtrack_tape"] = b.ref("tapes", sound, zip_key(sound["slug"], sound["user"]))
    gone = b.add_tape(fifi.sub, (128, 128), 30, zip_state="missing")
    b.extra["missing_zip_tape"] = b.ref("tapes", gone, zip_key(gone["slug"], gone["user"]))
    broken = b.add_tape(old.sub, (128, 128), 30, zip_state="broken")
    b.extra["broken_zip_tape"] = b.ref("tapes", broken, zip_key(broken["slug"], broken["user"]))
    # Removed items of every kind whatever the seed (the rates above add more).
    b.add_painting(old.sub, (64, 64), nuked=True)
    b.add_mood(old.sub, _mood_text(rng), deleted=True)
    b.add_piece(old.sub, "oops", nuked=True)
    b.add_tape(old.sub, (96, 96), 30, nuked=True)

    # Anonymous work, owned by the art account.
    recording_at = set(rng.sample(range(ANONYMOUS_PAINTINGS), ANONYMOUS_RECORDINGS))
    null_at = rng.choice([i for i in range(ANONYMOUS_PAINTINGS) if i not in recording_at])
    for i in range(ANONYMOUS_PAINTINGS):
        nuked = i != null_at and rng.random() < _NUKE_RATE["paintings"]
        doc = b.add_painting(
            None, b.painting_size(), recording=i in recording_at, nuked=nuked, null_user=i == null_at
        )
        if i == null_at:
            b.extra["null_user_painting"] = b.ref("paintings", doc, painting_key(doc["slug"], None))
    for i in range(ANONYMOUS_KIDLISP):
        b.add_kidlisp(None, make_kidlisp(rng), null_user=i % 60 == 0)
    for i in range(ANONYMOUS_PIECES):
        b.add_piece(None, _piece_slug(rng), nuked=i == 0)
    _anonymous_tapes(b, ANONYMOUS_TAPES)

    # News: a few dozen authors, as on the platform, and the edge cases of `small`.
    _news_posts(b, fifi, old, old, lurker)
    authors = [user for user, account in population if account]
    for user in rng.sample(authors, PLATFORM_NEWS_AUTHORS):
        for _ in range(rng.randint(1, 4)):
            b.add_news(user.sub, _mood_text(rng)[:200], url="https://aesthetic.computer/" + _piece_slug(rng))
    for i in range(PLATFORM_NEWS_FROM_BLUESKY):
        b.add_news(None, f"artist news {i}", from_bluesky=True)

    # The platform's newer shapes, last (the heavy user keeps his exact counts: none of them are his).
    _platform_shapes(
        b, [u for u, account in population if account], [u for u, account in population if not account]
    )


def _platform_shapes(b: _Builder, accounted: list[DemoUser], unaccounted: list[DemoUser]) -> None:
    """The newer shapes at the platform's scale: a few dozen paintings in progress and sealed ones (users
    with and without accounts, guests), 408 KidLisp projection rows over about 140 accounts (a heavy tail;
    most with the record the platform wrote, most backfilled), a few records of pieces MongoDB lacks, and a
    few tapes the platform linked under `at`."""
    rng = b.rng

    def owners(with_account: int, without: int, anonymous: int) -> list[str | None]:
        picked = rng.sample(accounted, with_account) + rng.sample(unaccounted, without)
        return [user.sub for user in picked] + [None] * anonymous

    for i, sub in enumerate(owners(*PLATFORM_WIP_PAINTINGS)):
        saves = rng.randint(1, 12) if i % 2 else 0
        b.add_wip_painting(sub, b.painting_size(), saves=saves, layers=rng.randint(1, 6) if saves else 1)
    for sub in owners(*PLATFORM_SEALED_PAINTINGS):
        b.add_sealed_painting(sub, b.painting_size(), layers=rng.randint(2, 8))
    pool = rng.sample(accounted, PLATFORM_KIDLISP_OWNERS)
    weights = [1 / (rank + 1) ** 0.7 for rank in range(len(pool))]
    for _ in range(PLATFORM_KIDLISP_PROJECTION):
        kind = rng.random()
        if kind < 0.08:
            user, account = None, True  # a guest's piece: the art account
        elif kind < 0.13:
            user, account = rng.choice(unaccounted), False
        else:
            user, account = rng.choices(pool, weights)[0], True
        b.add_kidlisp_projection(
            user.sub if user else None,
            make_kidlisp(rng),
            platform_record=account and rng.random() < 0.85,
            backfilled=rng.random() < 0.6,
        )
    for user in rng.sample(pool, PLATFORM_ORPHAN_KIDLISP):
        b.add_orphan_kidlisp_record(user.sub)
    for user in rng.sample(accounted, PLATFORM_LINKED_TAPES):
        b.add_platform_tape(user.sub, b.tape_size(), rng.randint(30, 90), fps=rng.choice((24, 30, 60)))


def _news_posts(b: _Builder, main: DemoUser, other: DemoUser, stale: DemoUser, lurker: DemoUser) -> None:
    """News: live posts (one whose `url` is no URL), a dead one, an admin post whose body is over the
    lexicon's limit, posts copied in from Bluesky, and one by a user without an account."""
    b.add_news(
        main.sub,
        "the oven bakes tapes now 🍞",
        text="MP4s for every tape.",
        url="https://aesthetic.computer/oven",
    )
    b.add_news(main.sub, "kidlisp turns one")
    b.add_news(main.sub, "a link that is not one", url="see the prompt")
    b.add_news(main.sub, "retracted headline", text="never mind", dead=True)
    long_body = b.add_news(main.sub, "the full changelog", text="- a change\n" * (NEWS_BODY_MAX // 11 + 10))
    b.failing.add(long_body["_id"])
    b.extra["long_news_body"] = b.ref("news-posts", long_body) | {"length": len(long_body["text"])}
    b.add_news(other.sub, "garden party at the prompt", url="https://aesthetic.computer/garden")
    b.add_news(stale.sub, "metronome tips", text="tap along")
    b.add_news(lurker.sub, "a post by a user without an account")
    for title in ("an artist's new zine", "open studio this friday"):
        b.add_news(
            None, title, url="https://bsky.app/profile/artistnewsnetwork.bsky.social", from_bluesky=True
        )


_SCENARIOS = {"small": _small, "bench": _bench, "platform": _platform}
assert tuple(_SCENARIOS) == SIZES, "acpipeline.demo.SIZES names every scenario"


# ---------------------------------------------------------------------------------------------- entry point


def seed_dataset(
    db: MongoDatabase,
    media_root: Path,
    create_account: CreateAccount,
    size: str = "small",
    seed: int = 7,
    *,
    reset: bool = False,
    account_workers: int = ACCOUNT_WORKERS,
    media_workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    blobs_url: str | None = None,
) -> DatasetSummary:
    """Fill `db` (a pymongo-API Database) and `media_root` with a synthetic Aesthetic Computer dataset.

    `size` is "small" (every edge case, a few of each), "bench" (the heavy user's real counts plus 32
    anonymous tapes) or "platform" (the platform's real scale: 4,201 users, 978 accounts, the heavy user,
    the anonymous work, every edge case of small). Refuses a database that already has users unless `reset`
    (which drops the seven collections and the two bucket folders under `media_root` first).

    `create_account` is called from `account_workers` threads at once (it must be thread-safe); media files
    are written by up to `media_workers` processes (default: the cores, at most MEDIA_WORKERS). The user
    documents are inserted last, once every account exists: a failure leaves no users behind (and drops
    what this call inserted), so the next call does not need `reset`. `progress` receives a line per
    phase (and per 100 accounts).

    `blobs_url` is the oven's bucket (a template with {key}) that baked tapes' `mp4Url` point into: default
    ACPIPELINE_BLOBS_URL (the demo's media server), else production's. The records the platform wrote
    itself are not created here (this module knows no PDS client): the summary's `platform_records` lists
    them, for `acpipeline.demo.environment.write_platform_records`.
    """
    if size not in _SCENARIOS:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    started = time.perf_counter()
    if db["users"].find_one({}, {"_id": 1}) is not None:
        if not reset:
            raise DatasetExists("the database already has users; pass reset=True to replace the demo data")
        for name in COLLECTIONS:
            db.drop_collection(name)
        for bucket in (USER_BUCKET, ART_BUCKET, BLOBS_BUCKET):
            shutil.rmtree(Path(media_root) / bucket, ignore_errors=True)
    media_root = Path(media_root)
    media_root.mkdir(parents=True, exist_ok=True)
    builder = _Builder(
        media_root,
        create_account,
        size,
        seed,
        defer_media=size == "platform",
        account_workers=account_workers,
        progress=progress,
        blobs_url=blobs_url or os.environ.get(BLOBS_URL_ENV) or DEFAULT_BLOBS_URL,
    )
    inserted: list[str] = []
    try:
        _SCENARIOS[size](builder)
        media = builder.media_count()
        if sum(media.values()) >= 100:
            builder.say(
                f"writing {media['paintings']} paintings, {media['recordings']} recordings and "
                f"{media['tapes']} tapes ..."
            )
        _run_media_jobs([*builder.tape_jobs, *builder.media_jobs], media_workers)
        for job in builder.oven_jobs:  # they read the tapes' ZIPs
            job.run()
        for name in COLLECTIONS:  # the users last: they need their DIDs
            if name != "users" and builder.docs[name]:
                inserted.append(name)
                db[name].insert_many(builder.docs[name])
        if builder.accounts_pending >= 100:
            builder.say("waiting for the last accounts ...")
        builder.finish_accounts()
        inserted.append("users")
        db["users"].insert_many(builder.docs["users"])
    except BaseException:
        builder.close()
        for name in inserted:
            db.drop_collection(name)
        raise
    return _summarise(builder, size, seed, time.perf_counter() - started)


def _has_account(user: dict[str, Any]) -> bool:
    """What the sync reads as an account: a DID, a password and a handle, nested or in flat fields."""
    nested = user.get("atproto")
    atproto: dict[str, Any] = nested if isinstance(nested, dict) else {}
    return all(atproto.get(key) or user.get(f"atproto_{key}") for key in ("did", "password", "handle"))


def _in_progress(doc: dict[str, Any]) -> bool:
    """A painting the editor has not sealed yet: no item at all."""
    return doc.get("status") == WIP_STATUS and isinstance(doc.get("wip"), dict)


def _removed(doc: dict[str, Any]) -> bool:
    """Taken down by its owner: nuked, deleted, or a dead news post."""
    return doc.get("nuked") is True or doc.get("deleted") is True or doc.get("status") == "dead"


def _records_expected(b: _Builder) -> dict[str, int]:
    """Per collection, the records a complete sync writes: live items (not nuked, deleted or dead) whose
    owner has an account (anonymous ones go to the art account; moods and news are never anonymous, and
    news copied from Bluesky is not ours) and that do not fail on purpose (missing or broken media, a news
    body over the lexicon's limit). Paintings in progress are no items; sealed ones are paintings, KidLisp
    projection rows are pieces (their platform records are adopted, not added)."""
    accounts = {doc["_id"] for doc in b.docs["users"] if _has_account(doc)}
    expected = {}
    for name in MEDIA_COLLECTIONS:
        count = 0
        for doc in b.docs[name]:
            if _removed(doc) or _in_progress(doc) or doc["_id"] in b.failing or "external" in doc:
                continue
            owner = doc.get("user") or (ART_GUEST_SUB if name not in ("moods", "news-posts") else None)
            count += owner in accounts
        expected[name] = count
    return expected


def _spread(values: list[int]) -> dict[str, int]:
    """Users with any, median, p90, p99 and max of per-user counts (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return {"users": 0, "with_any": 0, "median": 0, "p90": 0, "p99": 0, "max": 0}

    def rank(share: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]

    return {
        "users": len(ordered),
        "with_any": sum(v > 0 for v in ordered),
        "median": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "max": ordered[-1],
    }


def _items_per_user(b: _Builder, owned: dict[str, dict[str, int]]) -> dict[str, dict[str, dict[str, int]]]:
    people = [doc for doc in b.docs["users"] if doc["_id"] != ART_GUEST_SUB]
    groups = {"all": people, "with_account": [doc for doc in people if _has_account(doc)]}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for group, docs in groups.items():
        counts = [owned.get(doc["_id"], {}) for doc in docs]
        out[group] = {name: _spread([c.get(name, 0) for c in counts]) for name in MEDIA_COLLECTIONS}
        out[group]["items"] = _spread([sum(c.values()) for c in counts])
    return out


def _summarise(b: _Builder, size: str, seed: int, elapsed: float) -> DatasetSummary:
    owned: dict[str, dict[str, int]] = {}
    anonymous: dict[str, int] = {}
    removed: dict[str, int] = {}
    for name in MEDIA_COLLECTIONS:
        anonymous[name] = 0
        removed[name] = 0
        for doc in b.docs[name]:
            user = doc.get("user")
            if user:
                owned.setdefault(user, {n: 0 for n in MEDIA_COLLECTIONS})
                owned[user][name] += 1
            else:
                anonymous[name] += 1
            if _removed(doc):
                removed[name] += 1
    art = next(u for u in b.users if u.sub == ART_GUEST_SUB)
    expected = _records_expected(b)
    return DatasetSummary(
        size=size,
        seed=seed,
        media_root=str(b.media_root),
        counts={name: len(docs) for name, docs in b.docs.items()},
        users=list(b.users),
        handles_with_accounts=[u.pds_handle for u in b.users if u.pds_handle],
        user_without_account=b.extra.get("user_without_account"),
        flat_fields_user=b.extra.get("flat_fields_user"),
        art_guest=art,
        owned_counts=owned,
        anonymous_counts=anonymous,
        removed_counts=removed,
        recordings=b.recordings,
        missing_image_painting=b.extra.get("missing_image_painting"),
        missing_zip_tape=b.extra.get("missing_zip_tape"),
        broken_zip_tape=b.extra.get("broken_zip_tape"),
        null_user_painting=b.extra.get("null_user_painting"),
        large_painting=b.extra.get("large_painting"),
        long_kidlisp=b.extra.get("long_kidlisp"),
        long_news_body=b.extra.get("long_news_body"),
        soundtrack_tape=b.extra.get("soundtrack_tape"),
        same_when_moods=b.extra.get("same_when_moods", []),
        wip_paintings=b.shapes["wip_paintings"],
        sealed_paintings=b.shapes["sealed_paintings"],
        kidlisp_projection_rows=b.shapes["kidlisp_projection_rows"],
        platform_tapes=b.shapes["platform_tapes"],
        platform_records=list(b.platform_records),
        orphan_kidlisp_records=b.shapes["orphan_kidlisp_records"],
        records_expected=expected,
        records_expected_total=sum(expected.values()),
        records_on_pds_total=sum(expected.values()) + len(b.shapes["orphan_kidlisp_records"]),
        items_per_user=_items_per_user(b, owned),
        elapsed_seconds=round(elapsed, 3),
    )
