"""The platform dataset: the platform at its real scale (spec: "Scale of the real data"), every user but the
named ones drawn from a heavy-tailed profile, with every edge case of `small`."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from acpipeline.demo.dataset import edge_cases as edge
from acpipeline.demo.dataset import platform_shapes as shapes
from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.model import DemoUser, painting_key
from acpipeline.demo.dataset.recipes import ANONYMOUS_TAPES, anonymous_tapes, heavy_user
from acpipeline.demo.dataset.text import KIDLISP_MAX, make_kidlisp, mood_text, piece_slug, user_names

PLATFORM_USERS = 4_201  # art-guest not counted
PLATFORM_ACCOUNTS = 978  # users with a PDS account (art-guest not counted)
PLATFORM_STALE_HANDLES = 5  # accounts still named NAME.pds.aesthetic.computer
PLATFORM_FLAT_USERS = 8  # accounts stored in the older flat atproto_* fields
ANONYMOUS_PAINTINGS = 1_064
ANONYMOUS_RECORDINGS = 529
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

Population = list[tuple[DemoUser, bool]]  # (user, whether it has a PDS account)


def platform_dataset(b: Builder) -> None:
    """The platform at its real scale: 4,201 users, 978 of them with a PDS account (5 stale handles, 8 in
    flat fields), the heavy user's exact counts, 1,064 anonymous paintings (529 with recordings) and 32
    anonymous tapes; everyone else a heavy-tailed handful; removed items at a few percent; and every edge
    case of `small`."""
    rng = b.rng
    names = iter(user_names(rng, PLATFORM_USERS, {"jeffrey", "fifi", "oldtimer", "lurker", "art"}))

    # Users first: every handle and password is decided now and the accounts are created in the
    # background (the builder's threads) while the items and media files are made.
    jeffrey, fifi, old, lurker = edge.named_users(b)
    population = [(fifi, True), (old, True), (lurker, False), *_other_users(b, names)]
    b.say(
        f"creating {b.accounts.pending} accounts on the PDS ({b.accounts.workers} at a time) while the "
        "documents and media files are made ..."
    )

    # Items: the heavy user, then everyone else from a heavy-tailed profile.
    heavy_user(b, jeffrey.sub)
    for user, account in population:
        counts = _item_counts(rng, account)
        if user in (fifi, old, lurker):  # the named users always have something to show
            counts["paintings"] = max(counts["paintings"], 2)
            counts["moods"] = max(counts["moods"], 2)
        _user_items(b, user.sub, counts)

    _edge_cases(b, fifi, old)
    _anonymous_work(b)

    # News: a few dozen authors, as on the platform, and the edge cases of `small`.
    edge.news_posts(b, fifi, old, old, lurker)
    authors = [user for user, account in population if account]
    for user in rng.sample(authors, PLATFORM_NEWS_AUTHORS):
        for _ in range(rng.randint(1, 4)):
            b.add_news(user.sub, mood_text(rng)[:200], url="https://aesthetic.computer/" + piece_slug(rng))
    for i in range(PLATFORM_NEWS_FROM_BLUESKY):
        b.add_news(None, f"artist news {i}", from_bluesky=True)

    # The platform's newer shapes, last (the heavy user keeps his exact counts: none of them are his).
    _platform_shapes(
        b, [u for u, account in population if account], [u for u, account in population if not account]
    )


def _other_users(b: Builder, names: Iterator[str]) -> Population:
    """Everyone but the named users: a few with a stale handle or in flat fields, most without an account,
    and not every user without one picked a handle."""
    rng = b.rng
    others = PLATFORM_USERS - 4
    accounted = sorted(rng.sample(range(others), PLATFORM_ACCOUNTS - 3))
    stale = set(rng.sample(accounted, PLATFORM_STALE_HANDLES - 1))
    plain = [i for i in accounted if i not in stale]
    flat = {min(stale), *rng.sample(plain, PLATFORM_FLAT_USERS - 2)}
    with_account = set(accounted)
    population: Population = []
    for i in range(others):
        account = i in with_account
        sub = b.sub("sotce-") if rng.random() < 0.03 else b.sub()
        name = next(names) if account or rng.random() < 0.7 else None  # not every user picked a handle
        domain = ".pds.aesthetic.computer" if i in stale else ".at.aesthetic.computer"
        user = b.add_user(name, f"{name}{domain}" if account else None, sub=sub, flat=i in flat)
        population.append((user, account))
    return population


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


def _user_items(b: Builder, sub: str, counts: dict[str, int]) -> None:
    rng = b.rng
    for _ in range(counts["paintings"]):
        nuked = rng.random() < _NUKE_RATE["paintings"]
        b.add_painting(sub, b.painting_size(), recording=rng.random() < _RECORDING_RATE, nuked=nuked)
    for _ in range(counts["moods"]):
        b.add_mood(sub, mood_text(rng), deleted=rng.random() < _DELETE_RATE)
    for _ in range(counts["pieces"]):
        b.add_piece(sub, piece_slug(rng), nuked=rng.random() < _NUKE_RATE["pieces"])
    for _ in range(counts["kidlisp"]):
        length = rng.randint(5_000, KIDLISP_MAX - 10) if rng.random() < _LONG_KIDLISP_RATE else None
        b.add_kidlisp(sub, make_kidlisp(rng, length))
    for _ in range(counts["tapes"]):
        nuked = rng.random() < _NUKE_RATE["tapes"]
        frames, fps = rng.randint(30, 90), rng.choice((24, 30, 30, 60))
        b.add_tape(sub, b.tape_size(), frames, fps=fps, soundtrack=rng.random() < 0.2, nuked=nuked)


def _edge_cases(b: Builder, fifi: DemoUser, old: DemoUser) -> None:
    """The edge cases of `small`, owned by users with accounts (the heavy user keeps his exact counts),
    and removed items of every kind whatever the seed (the rates above add more)."""
    edge.large_painting(b, fifi.sub)
    edge.missing_image_painting(b, fifi.sub)
    edge.long_and_twin_moods(b, fifi.sub, fifi.sub)
    edge.long_and_unicode_kidlisp(b, fifi.sub)
    edge.soundtrack_tape(b, fifi.sub)
    edge.failing_tapes(b, fifi.sub, old.sub)
    b.add_painting(old.sub, (64, 64), nuked=True)
    b.add_mood(old.sub, mood_text(b.rng), deleted=True)
    b.add_piece(old.sub, "oops", nuked=True)
    b.add_tape(old.sub, (96, 96), 30, nuked=True)


def _anonymous_work(b: Builder) -> None:
    """Anonymous work, owned by the art account."""
    rng = b.rng
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
        b.add_piece(None, piece_slug(rng), nuked=i == 0)
    anonymous_tapes(b, ANONYMOUS_TAPES)


def _platform_shapes(b: Builder, accounted: list[DemoUser], unaccounted: list[DemoUser]) -> None:
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
        shapes.add_wip_painting(
            b, sub, b.painting_size(), saves=saves, layers=rng.randint(1, 6) if saves else 1
        )
    for sub in owners(*PLATFORM_SEALED_PAINTINGS):
        shapes.add_sealed_painting(b, sub, b.painting_size(), layers=rng.randint(2, 8))
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
        shapes.add_kidlisp_projection(
            b,
            user.sub if user else None,
            make_kidlisp(rng),
            platform_record=account and rng.random() < 0.85,
            backfilled=rng.random() < 0.6,
        )
    for user in rng.sample(pool, PLATFORM_ORPHAN_KIDLISP):
        shapes.add_orphan_kidlisp_record(b, user.sub)
    for user in rng.sample(accounted, PLATFORM_LINKED_TAPES):
        shapes.add_platform_tape(
            b, user.sub, b.tape_size(), rng.randint(30, 90), fps=rng.choice((24, 30, 60))
        )
