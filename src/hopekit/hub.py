"""Can the Hugging Face hub be used now? A fail-fast check, shared by models and datasets.

Offline, ``transformers`` and ``datasets`` retry a hub request for 25–50 s before failing with a
``ConnectionError`` traceback. :func:`check_hub_access` answers in at most :data:`HUB_TIMEOUT`
seconds, with one line: it returns when a local copy exists, and otherwise raises ``ValueError``
when an offline variable is set (``HF_HUB_OFFLINE``; for datasets also ``HF_DATASETS_OFFLINE``)
or when the endpoint (``HF_ENDPOINT``, default https://huggingface.co) refuses a TCP connection
within the timeout.

Standard library only (``huggingface_hub``, when installed, is asked for its endpoint and offline
flag), so :mod:`hopekit.data` can use it without torch-free code paying for ``transformers``.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Sequence

__all__ = ["HUB_TIMEOUT", "DEFAULT_ENDPOINT", "hub_endpoint", "offline_variable", "check_hub_access"]

#: seconds to wait for the hub's host before calling it unreachable
HUB_TIMEOUT = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"
#: the values huggingface_hub reads as true
_TRUE = ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` now, else huggingface_hub's endpoint, else https://huggingface.co."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and datasets
        return DEFAULT_ENDPOINT
    return constants.ENDPOINT


def offline_variable(names: Sequence[str] = ("HF_HUB_OFFLINE",)) -> str | None:
    """The first of ``names`` that asks for offline mode, read from the environment now (and, for
    ``HF_HUB_OFFLINE``, from huggingface_hub's flag, which it read at import), else None."""
    for name in names:
        if os.environ.get(name, "").upper() in _TRUE:
            return name
    if "HF_HUB_OFFLINE" in names:
        try:
            from huggingface_hub import constants
        except ImportError:  # pragma: no cover
            return None
        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE"
    return None


def check_hub_access(label: str, *, cached: bool = False, what: str = "a hub repository",
                     offline_vars: Sequence[str] = ("HF_HUB_OFFLINE",),
                     advice: str = "download it and pass the local copy") -> None:
    """Return if ``cached`` (a local copy will serve) or the hub answers; else a one-line ``ValueError``
    ``"<label>: <what> with no cached copy, and <why>; <advice>"``.

    ``label`` names the setting (``"hf='org/name'"``, ``"data.corpus='hf:org/name'"``). The endpoint
    is tried with one TCP connection of at most :data:`HUB_TIMEOUT` seconds, unless a proxy variable
    (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``) is set: then the library's own request decides.
    """
    if cached:
        return
    var = offline_variable(offline_vars)
    if var is not None:
        raise ValueError(f"{label}: {what} with no cached copy, and {var} is set; {advice}")
    endpoint = hub_endpoint()
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return   # only the proxy knows whether the hub is reachable; a direct probe would refuse a good setup
    url = urllib.parse.urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT).close()
    except OSError as e:
        why = e.strerror or ("timed out" if isinstance(e, TimeoutError) else type(e).__name__)
        raise ValueError(f"{label}: {what} with no cached copy, and the hub ({endpoint}) is unreachable "
                         f"({why}); {advice}") from None
