"""Settings read from the environment, with the platform's own variable names where it has them."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATABASE = "aesthetic"
ART_HANDLE = "art.at.aesthetic.computer"
ART_GUEST_ID = "art-guest"

# Production storage layout (DigitalOcean Spaces); placeholders {bucket}, {user}, {user_dir}, {slug}.
DEFAULT_IMAGE_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{user}/painting/{slug}.png"
DEFAULT_GUEST_IMAGE_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{slug}.png"
DEFAULT_ZIP_URL = "https://{bucket}.sfo3.digitaloceanspaces.com/{user_dir}{slug}.zip"


def acpipeline_home() -> Path:
    """Embedded data and caches: `ACPIPELINE_HOME`, default `./.acpipeline`."""
    home = Path(os.environ.get("ACPIPELINE_HOME") or ".acpipeline").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home
