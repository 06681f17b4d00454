"""The small and bench datasets, and the heavy user and anonymous tapes the platform dataset shares."""

from __future__ import annotations

from acpipeline.demo.dataset import platform_shapes as shapes
from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.edge_cases import (
    failing_tapes,
    large_painting,
    long_and_twin_moods,
    long_and_unicode_kidlisp,
    missing_image_painting,
    named_users,
    news_posts,
    soundtrack_tape,
)
from acpipeline.demo.dataset.model import DemoUser, painting_key
from acpipeline.demo.dataset.text import KIDLISP_MAX, MOODS, PIECE_WORDS, make_kidlisp, mood_text

# The platform's real counts (spec: "Scale of the real data").
HEAVY_COUNTS = {"paintings": 395, "moods": 226, "pieces": 26, "kidlisp": 2_220, "tapes": 0}
ANONYMOUS_TAPES = 32

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


def small_dataset(b: Builder) -> None:
    """Every edge case, a few of each."""
    rng = b.rng
    jeffrey, fifi, old, lurker = named_users(b)
    _small_paintings(b, jeffrey, fifi, old, lurker)
    _small_moods(b, jeffrey, fifi, old, lurker)

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
    long_and_unicode_kidlisp(b, jeffrey.sub)
    b.add_kidlisp(fifi.sub, make_kidlisp(rng))
    b.add_kidlisp(lurker.sub, make_kidlisp(rng))
    for _ in range(3):
        b.add_kidlisp(None, make_kidlisp(rng))
    b.add_kidlisp(None, make_kidlisp(rng), null_user=True)

    # Tapes: small canvases, one with a soundtrack, anonymous ones, nuked, missing and broken ZIPs.
    soundtrack_tape(b, jeffrey.sub)
    b.add_tape(fifi.sub, (160, 120), 60, fps=60)
    b.add_tape(None, (128, 96), 36, fps=24)
    b.add_tape(None, (96, 96), 30, fps=30)
    b.add_tape(None, (64, 64), 20, nuked=True)
    failing_tapes(b, jeffrey.sub, None)
    news_posts(b, jeffrey, fifi, old, lurker)
    _small_platform_shapes(b, jeffrey)  # last: everything above stays as it was before these shapes


def _small_paintings(b: Builder, jeffrey: DemoUser, fifi: DemoUser, old: DemoUser, lurker: DemoUser) -> None:
    """Every size at least once, across users."""
    sizes = [(32, 32), (64, 48), (128, 128), (300, 200), (1024, 768), (640, 480), (100, 100), (512, 512)]
    for i, size in enumerate(sizes):
        b.add_painting(jeffrey.sub, size, recording=i == 2)
    large_painting(b, jeffrey.sub)
    b.add_painting(jeffrey.sub, (64, 64), nuked=True)
    missing_image_painting(b, jeffrey.sub)
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


def _small_moods(b: Builder, jeffrey: DemoUser, fifi: DemoUser, old: DemoUser, lurker: DemoUser) -> None:
    """Unicode and emoji, some deleted, two sharing one `when`."""
    texts = list(MOODS)
    b.rng.shuffle(texts)
    for i, text in enumerate(texts[:8]):
        b.add_mood(jeffrey.sub, text, deleted=i in (3, 6))
    long_and_twin_moods(b, jeffrey.sub, fifi.sub)
    for text in texts[8:11]:
        b.add_mood(fifi.sub, text)
    b.add_mood(old.sub, texts[11])
    b.add_mood(old.sub, texts[12], deleted=True)
    for text in texts[13:15]:
        b.add_mood(lurker.sub, text)


def _small_platform_shapes(b: Builder, jeffrey: DemoUser) -> None:
    """The platform's newer shapes, each once: paintings in progress (an empty one that expires, a saved
    one, a guest's), sealed ones (a user's and a guest's), KidLisp projection rows (three with the record
    the platform wrote, one backfilled; one without; a guest's with its record in the art account), a
    record of a piece MongoDB has no row for, and a tape the oven baked and the platform linked under `at`."""
    rng = b.rng
    shapes.add_wip_painting(b, jeffrey.sub, (128, 128))  # just started: nothing saved, expires in an hour
    shapes.add_wip_painting(b, jeffrey.sub, (256, 256), saves=3, layers=4)
    shapes.add_wip_painting(b, None, (64, 64), saves=1, layers=2)
    shapes.add_sealed_painting(b, jeffrey.sub, (200, 150), layers=5)
    shapes.add_sealed_painting(b, None, (96, 96), layers=3)
    for i in range(3):
        shapes.add_kidlisp_projection(
            b, jeffrey.sub, make_kidlisp(rng), platform_record=True, backfilled=i == 2
        )
    shapes.add_kidlisp_projection(
        b, jeffrey.sub, make_kidlisp(rng), platform_record=False
    )  # its record failed
    shapes.add_kidlisp_projection(b, None, make_kidlisp(rng), platform_record=True)
    shapes.add_orphan_kidlisp_record(b, jeffrey.sub)
    shapes.add_platform_tape(b, jeffrey.sub, (128, 96), 30, fps=30)


def heavy_user(b: Builder, sub: str) -> None:
    """The heavy user's real counts (HEAVY_COUNTS): 395 paintings (every tenth with a recording), 226
    moods, 26 pieces, 2,220 kidlisp (six of them 5,000 characters or more); nothing removed, no tapes."""
    rng = b.rng
    for i in range(HEAVY_COUNTS["paintings"]):
        b.add_painting(sub, rng.choices(_HEAVY_SIZES, _HEAVY_WEIGHTS)[0], recording=i % 10 == 0)
    for _ in range(HEAVY_COUNTS["moods"]):
        b.add_mood(sub, mood_text(rng))
    names = list(PIECE_WORDS)
    rng.shuffle(names)
    for name in names[: HEAVY_COUNTS["pieces"]]:
        b.add_piece(sub, name)
    kidlisp = HEAVY_COUNTS["kidlisp"]
    long_at = set(rng.sample(range(kidlisp), 6))
    for i in range(kidlisp):
        length = rng.randint(5_000, KIDLISP_MAX - 10) if i in long_at else None
        b.add_kidlisp(sub, make_kidlisp(rng, length))


def anonymous_tapes(b: Builder, count: int) -> None:
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


def bench_dataset(b: Builder) -> None:
    """The heavy user's real counts plus 32 anonymous tapes."""
    jeffrey = b.add_user("jeffrey", "jeffrey.at.aesthetic.computer")
    b.add_art_guest()
    heavy_user(b, jeffrey.sub)
    anonymous_tapes(b, ANONYMOUS_TAPES)
