"""The bounds an untrusted tape is held to, and the one-line refusal every step raises."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

UPSCALE = 3  # the platform's 3x nearest-neighbour enlargement, of the video and of the poster frame


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


DEFAULT_LIMITS = TapeLimits()


def human_size(n: int) -> str:
    """A byte count for a one-line message: GiB, MiB or KiB with one decimal, else bytes."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def shown_name(name: str, quote: bool = True) -> str:
    """A zip entry name fit for a one-line message: escaped, shortened."""
    shown = repr(name) if quote else repr(name)[1:-1]
    return shown if len(shown) <= 80 else shown[:77] + "..."
