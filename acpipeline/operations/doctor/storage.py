"""Media storage: a few real media URLs of each kind, fetched as the sync fetches them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from acpipeline.core.items import Item, ItemProblem
from acpipeline.core.media import MEDIA, PAINTING, TAPE
from acpipeline.errors import OperatorError
from acpipeline.operations.doctor.base import CheckResult, Doctor, english_list
from acpipeline.resources.storage import FetchProblem, StorageResource, shown_url
from acpipeline.sync.extract import owner_filter

STORAGE_TRIES = 3  # documents tried per kind of media URL before calling the template wrong
DOCUMENTS_READ = 20  # documents read per kind to find those tries among (some are nuked or broken)


def _image_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(PAINTING.image_file(item))


def _tape_zip_url(storage: StorageResource, item: Item) -> str:
    return storage.url_of(TAPE.zip_file(item))


@dataclass(frozen=True)
class _UrlKind:
    """One kind of media URL the storage check tries, and the setting that builds it."""

    name: str
    media: str
    anonymous: bool
    setting: str
    url: Callable[[StorageResource, Item], str]


URL_KINDS = (
    _UrlKind("painting image", "painting", False, "ACPIPELINE_IMAGE_URL", _image_url),
    _UrlKind("anonymous painting image", "painting", True, "ACPIPELINE_GUEST_IMAGE_URL", _image_url),
    _UrlKind("tape ZIP", "tape", False, "ACPIPELINE_ZIP_URL", _tape_zip_url),
)


def check_storage(doctor: Doctor) -> CheckResult:
    """Real documents' media URLs, built by the storage resource, answer a HEAD."""
    tried = [_try_urls(doctor, kind) for kind in URL_KINDS]
    failed = [r.detail for r in tried if r.status == "fail"]
    if failed:
        return CheckResult("storage", "fail", "; ".join(failed))
    answered = [r for r in tried if r.status == "ok"]
    if not answered:
        return CheckResult("storage", "warn", "no painting or tape in MongoDB to try a storage URL with")
    untried = [r.check for r in tried if r.status == "skipped"]
    hosts = dict.fromkeys(shown_url(r.detail).partition("/")[0] for r in answered)
    detail = f"{english_list([r.check for r in answered])} answer (at {', '.join(hosts)})"
    return CheckResult("storage", "ok", detail + (f" (no {english_list(untried)} to try)" if untried else ""))


def _try_urls(doctor: Doctor, kind: _UrlKind) -> CheckResult:
    """The kind's first URL in storage ("ok", with it as detail), what is wrong with its URLs ("fail"), or
    "skipped" when no document gives one to try."""
    assert doctor.db is not None
    rules = MEDIA[kind.media]
    query = owner_filter(None) if kind.anonymous else {"user": {"$exists": True, "$nin": [None, ""]}}
    urls: list[str] = []
    for doc in doctor.db[rules.collection].find(query).limit(DOCUMENTS_READ):
        if not rules.is_item(doc):  # a painting in progress has no file in storage yet
            continue
        item = rules.normalise(doc)
        if item.problem or item.removed:
            continue
        try:
            urls.append(kind.url(doctor.storage, item))
        except ItemProblem:  # a document storage cannot hold (a bucket not configured): not this check's
            continue
        except OperatorError as exc:  # the template itself: a placeholder storage URLs do not fill
            return CheckResult(kind.name, "fail", str(exc))
        if len(urls) == STORAGE_TRIES:
            break
    if not urls:
        return CheckResult(kind.name, "skipped", "")
    for url in urls:
        try:
            if doctor.storage.exists(url):
                return CheckResult(kind.name, "ok", url)
        except FetchProblem as exc:
            return CheckResult(kind.name, "fail", f"{kind.name}: {exc}: check {kind.setting}")
    return CheckResult(
        kind.name,
        "fail",
        f"none of {len(urls)} {kind.name}s tried is in storage (e.g. {shown_url(urls[0])}): "
        f"check {kind.setting}",
    )
