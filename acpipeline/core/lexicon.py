"""Load lexicon files and validate record values against them before anything is written.

The PDS answers `validationStatus: "unknown"` for lexicons it does not know and checks nothing, so this is
the only check our records get. It covers what the six `computer.aesthetic.*` lexicons use: objects with
`required` fields, arrays, strings (`maxLength` in UTF-8 bytes as the lexicon spec defines it, `maxGraphemes`,
`format` datetime and uri), integers, booleans and blobs (`accept`, `maxSize`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from acpipeline.core.tid import is_tid
from acpipeline.errors import OperatorError

_DATETIME_RE = re.compile(
    r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{1,20})?(Z|[+-][0-2][0-9]:[0-5][0-9])$"
)
_URI_RE = re.compile(r"^[a-z][a-z.+-]*:\S+$")


@dataclass(frozen=True)
class Violation:
    """One rule a record value breaks, at its field's path (`thumbnail.size`, `tags[2]`)."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class RecordInvalid(ValueError):
    """A record value the lexicon refuses; `violations` holds every rule it breaks, not only the first."""

    def __init__(self, nsid: str, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(f"{nsid} record invalid: " + "; ".join(str(v) for v in violations))


@dataclass(frozen=True)
class Lexicon:
    """One record lexicon as the check reads it: its NSID, its record key type (`tid`, `any`, ...) and the
    record's object schema."""

    nsid: str
    key: str
    record: dict[str, Any]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Lexicon:
        """The record lexicon a document (as `load_documents` reads it) defines."""
        main = doc["defs"]["main"]
        if main.get("type") != "record":
            raise ValueError(f"{doc['id']}: main def is not a record")
        return cls(nsid=doc["id"], key=main.get("key", "any"), record=main["record"])

    def violations(self, value: dict[str, Any]) -> list[Violation]:
        return _check_object(self.record, value, "")

    def validate(self, value: dict[str, Any]) -> None:
        found = self.violations(value)
        if found:
            raise RecordInvalid(self.nsid, found)

    def check_key(self, rkey: str) -> None:
        if self.key == "tid" and not is_tid(rkey):
            raise RecordInvalid(self.nsid, [Violation("rkey", f"{rkey!r} is not a TID")])


def default_lexicon_dir() -> Path:
    """The checkout's `lexicons/`, found from this file's place, not from the working directory."""
    return Path(__file__).resolve().parents[2] / "lexicons"


def load_documents(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every lexicon document under `directory` (default: the project's `lexicons/`), by its `id`: what
    the record check validates against and what `acpipeline lexicons publish` writes."""
    root = directory or default_lexicon_dir()
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise OperatorError(f"{path} is not valid JSON ({exc})") from None
        nsid = doc.get("id") if isinstance(doc, dict) else None
        if not isinstance(nsid, str) or nsid.count(".") < 2 or doc.get("lexicon") != 1:
            raise OperatorError(f'{path} is not a lexicon document ("lexicon": 1 and an NSID "id")')
        if nsid in docs:
            raise OperatorError(f"{path}: {nsid} is defined twice under {root}")
        docs[nsid] = doc
    if not docs:
        raise OperatorError(f"no lexicons under {root}")
    return docs


@cache
def load_lexicons(directory: Path | None = None) -> dict[str, Lexicon]:
    """Every lexicon under `directory` (default: the project's `lexicons/`), by NSID."""
    return {nsid: Lexicon.of(doc) for nsid, doc in load_documents(directory).items()}


def _check_object(schema: dict[str, Any], value: Any, path: str) -> list[Violation]:
    if not isinstance(value, dict):
        return [Violation(path or "record", "must be an object")]
    out = [
        Violation(f"{path}{name}", "required")
        for name in schema.get("required", [])
        if value.get(name) is None
    ]
    for name, prop in schema.get("properties", {}).items():
        if name in value and value[name] is not None:
            out.extend(_check_value(prop, value[name], f"{path}{name}"))
    return out


def _check_value(prop: dict[str, Any], value: Any, field: str) -> list[Violation]:
    kind = prop.get("type")
    if kind == "string":
        return _check_string(prop, value, field)
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [Violation(field, "must be an integer")]
        if "maximum" in prop and value > prop["maximum"]:
            return [Violation(field, f"maximum {prop['maximum']}")]
        if "minimum" in prop and value < prop["minimum"]:
            return [Violation(field, f"minimum {prop['minimum']}")]
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [Violation(field, "must be a boolean")]
    if kind == "blob":
        return _check_blob(prop, value, field)
    if kind == "object":
        return _check_object(prop, value, f"{field}.")
    if kind == "array":
        return _check_array(prop, value, field)
    return []


def _check_array(prop: dict[str, Any], value: Any, field: str) -> list[Violation]:
    """An array's `maxLength`/`minLength` count its elements; each element is checked against `items`."""
    if not isinstance(value, list):
        return [Violation(field, "must be an array")]
    out = []
    if "maxLength" in prop and len(value) > prop["maxLength"]:
        out.append(Violation(field, f"at most {prop['maxLength']} items (has {len(value)})"))
    if "minLength" in prop and len(value) < prop["minLength"]:
        out.append(Violation(field, f"at least {prop['minLength']} items"))
    for n, element in enumerate(value):
        out.extend(_check_value(prop.get("items", {}), element, f"{field}[{n}]"))
    return out


def _check_string(prop: dict[str, Any], value: Any, field: str) -> list[Violation]:
    if not isinstance(value, str):
        return [Violation(field, "must be a string")]
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return [Violation(field, "invalid Unicode (lone surrogate)")]
    out = []
    if "maxLength" in prop and len(encoded) > prop["maxLength"]:
        out.append(Violation(field, f"maxLength {prop['maxLength']} UTF-8 bytes (has {len(encoded)})"))
    if "minLength" in prop and len(encoded) < prop["minLength"]:
        out.append(Violation(field, f"minLength {prop['minLength']}"))
    if "maxGraphemes" in prop and _graphemes(value) > prop["maxGraphemes"]:
        out.append(Violation(field, f"maxGraphemes {prop['maxGraphemes']}"))
    fmt = prop.get("format")
    if fmt == "datetime" and not _DATETIME_RE.match(value):
        out.append(Violation(field, "format datetime (ISO 8601 with timezone)"))
    if fmt == "uri" and not _URI_RE.match(value):
        out.append(Violation(field, "format uri"))
    return out


def _check_blob(prop: dict[str, Any], value: Any, field: str) -> list[Violation]:
    if not (isinstance(value, dict) and value.get("$type") == "blob" and isinstance(value.get("ref"), dict)):
        return [Violation(field, "must be a blob reference")]
    out = []
    accept = prop.get("accept")
    mime = value.get("mimeType", "")
    if accept and not any(mime == a or (a.endswith("/*") and mime.startswith(a[:-1])) for a in accept):
        out.append(Violation(field, f"mimeType {mime!r} not in accept {accept}"))
    if "maxSize" in prop and value.get("size", 0) > prop["maxSize"]:
        out.append(Violation(field, f"maxSize {prop['maxSize']} bytes (has {value.get('size')})"))
    return out


def _graphemes(text: str) -> int:
    """Approximate grapheme count: code points that are not combining marks or joiners."""
    return sum(1 for ch in text if not unicodedata.combining(ch) and ch not in "\u200d\ufe0f")
