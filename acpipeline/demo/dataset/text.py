"""The dataset's text: moods, piece slugs, KidLisp sources and handle names."""

from __future__ import annotations

import random

KIDLISP_MAX = 50_000

MOODS = [
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
PIECE_WORDS = [
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


def user_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
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


def mood_text(rng: random.Random) -> str:
    return rng.choice(MOODS) + rng.choice(("", "", " 🙂", " !", " ..."))


def piece_slug(rng: random.Random) -> str:
    slug = rng.choice(PIECE_WORDS)
    kind = rng.random()
    if kind < 0.3:
        slug += "-" + rng.choice(PIECE_WORDS)
    elif kind < 0.45:
        slug += str(rng.randint(2, 99))
    return slug
