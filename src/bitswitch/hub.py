"""Hub access: probe once whether the Hugging Face endpoint answers, else go offline."""

from __future__ import annotations

import os

_HUB_STATE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect; probed once per process.

    When it does not, the hub clients are switched to offline mode (only caches are read), so a
    missing model or dataset fails in a second with one message instead of after a minute of
    retries and a screen of warnings.
    """
    if "reachable" in _HUB_STATE:
        return _HUB_STATE["reachable"]
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    reachable = not constants.HF_HUB_OFFLINE
    if reachable:
        url = urlparse(constants.ENDPOINT)
        try:
            with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
                pass
        except OSError:
            reachable = False
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        try:
            import datasets.config

            datasets.config.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    _HUB_STATE["reachable"] = reachable
    return reachable
