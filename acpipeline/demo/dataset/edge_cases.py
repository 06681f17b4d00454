"""The edge cases a sync must handle, shared by the small and platform datasets: each is made with the
builder's random stream and, where the summary names it, recorded in `Builder.extra`."""

from __future__ import annotations

from acpipeline.demo.dataset.builder import Builder
from acpipeline.demo.dataset.model import DemoUser, painting_key, zip_key
from acpipeline.demo.dataset.text import KIDLISP_MAX, make_kidlisp

NEWS_BODY_MAX = 10_000  # the news lexicon's `body` limit in UTF-8 bytes: admin posts are not capped
_LONG_MOOD = ("a long mood that goes on " * 200)[:4_900] + " 🌊"


def named_users(b: Builder) -> tuple[DemoUser, DemoUser, DemoUser, DemoUser]:
    """The four named users, then the art account: jeffrey (the main one), fifi (a `sotce-` sub), oldtimer
    (a stale domain, in flat fields) and lurker (no account)."""
    jeffrey = b.add_user("jeffrey", "jeffrey.at.aesthetic.computer")
    fifi = b.add_user("fifi", "fifi.at.aesthetic.computer", sub=b.sub("sotce-"))
    old = b.add_user("oldtimer", "oldtimer.pds.aesthetic.computer", flat=True)  # stale domain, flat fields
    lurker = b.add_user("lurker", None)
    b.add_art_guest()
    b.extra["flat_fields_user"] = old
    b.extra["user_without_account"] = lurker
    return jeffrey, fifi, old, lurker


def large_painting(b: Builder, sub: str) -> None:
    large = b.add_painting(sub, (1024, 768), noisy=True)
    b.extra["large_painting"] = b.ref("paintings", large, painting_key(large["slug"], large["user"]))


def missing_image_painting(b: Builder, sub: str) -> None:
    missing = b.add_painting(sub, (128, 96), write_image=False)
    b.extra["missing_image_painting"] = b.ref(
        "paintings", missing, painting_key(missing["slug"], missing["user"])
    )


def long_and_twin_moods(b: Builder, long_owner: str, twins_owner: str) -> None:
    """A mood of almost 5,000 characters, then two moods sharing one `when`."""
    b.add_mood(long_owner, _LONG_MOOD)
    shared = b.when()
    pair = [
        b.add_mood(twins_owner, "twin mood one 👯", when=shared),
        b.add_mood(twins_owner, "twin mood two 👯", when=shared),
    ]
    b.extra["same_when_moods"] = [str(doc["_id"]) for doc in pair]


def long_and_unicode_kidlisp(b: Builder, sub: str) -> None:
    """A source close to the 50,000 limit, then one with an emoji."""
    long_doc = b.add_kidlisp(sub, make_kidlisp(b.rng, KIDLISP_MAX - b.rng.randint(10, 99)))
    b.extra["long_kidlisp"] = b.ref("kidlisp", long_doc) | {"length": len(long_doc["source"])}
    b.add_kidlisp(sub, "(wipe rainbow) ; 🌈 unicode in code")


def soundtrack_tape(b: Builder, sub: str) -> None:
    sound = b.add_tape(sub, (128, 128), 45, fps=30, soundtrack=True)
    b.extra["soundtrack_tape"] = b.ref("tapes", sound, zip_key(sound["slug"], sound["user"]))


def failing_tapes(b: Builder, missing_owner: str, broken_owner: str | None) -> None:
    """A tape whose ZIP is missing, then one whose ZIP is truncated."""
    gone = b.add_tape(missing_owner, (128, 128), 30, zip_state="missing")
    b.extra["missing_zip_tape"] = b.ref("tapes", gone, zip_key(gone["slug"], gone["user"]))
    broken = b.add_tape(broken_owner, (128, 128), 30, zip_state="broken")
    b.extra["broken_zip_tape"] = b.ref("tapes", broken, zip_key(broken["slug"], broken.get("user")))


def news_posts(b: Builder, main: DemoUser, other: DemoUser, stale: DemoUser, lurker: DemoUser) -> None:
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
