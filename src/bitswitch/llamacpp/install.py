"""Where llama.cpp comes from: the npm package ``node-llama-cpp`` (prebuilt CPU binaries) run by ``node``.

Found, in order, through the environment variable ``BITSWITCH_LLAMA_CPP`` (a directory holding
``node_modules/node-llama-cpp``), the repository's ``.llama-cpp/`` (``make llama-cpp``), then the
current directory; only version :data:`VERSION` counts (the bridge's script is written against it).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BitswitchError

VERSION = "3.21.1"
ENV = "BITSWITCH_LLAMA_CPP"
INSTALL_COMMAND = f"make llama-cpp (npm i -E node-llama-cpp@{VERSION} --ignore-scripts --prefix .llama-cpp)"
REPO = Path(__file__).resolve().parents[3]   # src/bitswitch/llamacpp/install.py -> the checkout


@dataclass(frozen=True)
class LlamaCppInstall:
    """A usable node + node-llama-cpp pair: ``entry`` is the package's ES module entry point."""

    node: str
    package_dir: Path
    version: str

    @property
    def entry(self) -> Path:
        return self.package_dir / "dist" / "index.js"


def _candidates() -> list[tuple[str, Path]]:
    found = []
    if os.environ.get(ENV):
        found.append((f"${ENV}", Path(os.environ[ENV]).expanduser()))
    found += [("the repository's .llama-cpp", REPO / ".llama-cpp"), ("the current directory", Path.cwd())]
    return found


def _probe() -> tuple[LlamaCppInstall | None, str]:
    """The first usable install, or None and why there is none (one clause)."""
    node = shutil.which("node")
    if node is None:
        return None, "node is not on PATH"
    reasons = []
    for where, root in _candidates():
        package = root / "node_modules" / "node-llama-cpp"
        try:
            version = json.loads((package / "package.json").read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            if where.startswith("$"):   # only a directory the user named is worth mentioning
                reasons.append(f"{where} ({root}) has no node_modules/node-llama-cpp")
            continue
        if version != VERSION:
            reasons.append(f"{where} has node-llama-cpp {version}, not {VERSION}")
        elif not (package / "dist" / "index.js").is_file():
            reasons.append(f"{where} has an incomplete node-llama-cpp (no dist/index.js)")
        else:
            return LlamaCppInstall(node, package.resolve(), version), ""
    return None, "; ".join(reasons) or "node-llama-cpp is not installed"


def find_llama_cpp() -> LlamaCppInstall | None:
    """The install the bridge would use, or None (see the module docstring for the search order)."""
    return _probe()[0]


def require_llama_cpp() -> LlamaCppInstall:
    """:func:`find_llama_cpp`, or a one-line :class:`BitswitchError` with the install command."""
    install, why = _probe()
    if install is None:
        raise BitswitchError(f"llama.cpp is unavailable ({why}): install node >= 18 and run {INSTALL_COMMAND}, "
                             f"or point {ENV} at a directory holding node_modules/node-llama-cpp")
    return install
