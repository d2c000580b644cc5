"""Is the Hugging Face hub reachable? Asked before a download from it (a tagger, a base model
given as a repo id), so that offline work fails or falls back to the cache at once."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


def unreachable(timeout: float = 3.0) -> str:
    """Why the hub cannot be reached ("" when it may be). Without this check huggingface_hub
    retries an unreachable host five times with back-off (~25 s) before the same error; one
    refused or timed-out connection is enough to know, and the cache is then read directly.
    Behind a proxy the direct connection proves nothing, so the hub is left to try."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"
    return ""
