"""One TLS context per process, shared by every HTTP client (PDS, media storage)."""

from __future__ import annotations

import ssl
from functools import cache

import httpx


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CA bundle; SSL_CERT_FILE/SSL_CERT_DIR honoured), built once: httpx
    builds a new one for every client, loading the CA bundle each time (~40 ms of CPU), and every run
    creates several clients."""
    return httpx.create_ssl_context()
