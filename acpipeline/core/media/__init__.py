"""The six media types, one module each; `MEDIA` maps a partition's media name to its rules."""

from acpipeline.core.media.base import MediaRules, record_ref
from acpipeline.core.media.kidlisp import KidlispRules
from acpipeline.core.media.mood import MoodRules
from acpipeline.core.media.news import NewsRules
from acpipeline.core.media.painting import PaintingRules
from acpipeline.core.media.piece import PieceRules
from acpipeline.core.media.tape import TapeRules

PAINTING, TAPE = PaintingRules(), TapeRules()  # typed: the blob stage asks them where their files lie
MEDIA: dict[str, MediaRules] = {
    rules.name: rules for rules in (PAINTING, MoodRules(), PieceRules(), KidlispRules(), TAPE, NewsRules())
}
MEDIA_NAMES: list[str] = list(MEDIA)

__all__ = ["MEDIA", "MEDIA_NAMES", "PAINTING", "TAPE", "MediaRules", "record_ref"]
