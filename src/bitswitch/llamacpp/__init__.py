"""llama.cpp as a reference engine: SmolLM2's GGUF run by node-llama-cpp in a node subprocess.

``install.py`` finds node and the package (:func:`find_llama_cpp`, :func:`require_llama_cpp`);
``protocol.py`` speaks JSON lines to ``run.mjs`` (shipped as package data) in a node process;
``bridge.py`` is :class:`LlamaCpp`, the API on top.
Only :mod:`bitswitch.verify` (``bitswitch verify-gguf``) imports this package.
"""

from .bridge import LlamaCpp
from .install import VERSION, LlamaCppInstall, find_llama_cpp, require_llama_cpp

__all__ = ["LlamaCpp", "LlamaCppInstall", "VERSION", "find_llama_cpp", "require_llama_cpp"]
