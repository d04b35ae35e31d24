"""The validated configuration of ``bitswitch verify-gguf``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import BitswitchError
from ..jobs import RunConfig
from ..llamacpp.bridge import KV_CACHE_TYPES


#: ``--flash-attention`` -> the bridge's ``flash_attention``
FLASH_ATTENTION = {"auto": None, "on": True, "off": False}


@dataclass(kw_only=True)
class VerifyConfig(RunConfig):
    """``export``: a directory written by ``bitswitch export --format gguf``; ``model``, ``adapters``,
    ``profile`` and the quantizer options: what bitswitch's fake quantization runs (the export's own).
    ``squad`` / ``wikitext``: files to compare on (None skips that part); ``limit`` questions (of
    ``order``, stratified across articles by default); ``windows`` non-overlapping windows of
    ``window`` WikiText tokens. ``threads`` serve both engines. ``speed_repeats`` timed generations
    of ``speed_tokens`` tokens per file (0 skips the speed rows); ``reference_gguf``: the file the
    export's decode speed is set beside (default: SmolLM2's own Q4_1 GGUF for ``smollm2-135m``).
    ``noise_floor``: when > 0, bitswitch answers the questions once more with its input embeddings
    perturbed by that relative amount (:mod:`.noise`), and the report gives its agreement with itself:
    the ceiling of any two engines' agreement. ``kv_cache`` / ``flash_attention``: llama.cpp's
    context (``"f16"`` / ``"auto"``: its defaults; ``"f32"`` / ``"off"`` compute attention as
    bitswitch does)."""

    export: str
    profile: str
    out: str = "runs/verify-gguf"
    squad: str | None = None
    wikitext: str | None = None
    limit: int | None = 200
    max_new_tokens: int = 32
    windows: int = 8
    window: int = 256
    threads: int = 1
    speed_tokens: int = 64
    speed_repeats: int = 3
    reference_gguf: str | None = None
    calib_data: str | None = None
    noise_floor: float = 0.0
    kv_cache: str = "f16"
    flash_attention: str = "auto"
    progress: bool = True

    UNHASHED: ClassVar[tuple[str, ...]] = ("out", "device", "progress")

    def validate(self) -> None:
        super().validate()
        if self.data is not None:
            raise BitswitchError("verify-gguf reads --squad and --wikitext, not --data")
        if self.options.weight_grid == "nested":
            raise BitswitchError("a GGUF export is on the gguf weight grid: drop --weight-grid nested")
        for name in ("max_new_tokens", "windows", "threads"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.window < 2:
            raise BitswitchError(f"--window must be at least 2 tokens, got {self.window}")
        if self.speed_repeats < 0 or self.speed_tokens < 2:
            raise BitswitchError(f"--speed-repeats must be >= 0 and --speed-tokens >= 2, got {self.speed_repeats} "
                                 f"and {self.speed_tokens}")
        if not self.noise_floor >= 0:
            raise BitswitchError(f"--noise-floor must be >= 0 (a relative perturbation such as 1e-6), got "
                                 f"{self.noise_floor}")
        if self.kv_cache not in KV_CACHE_TYPES:
            raise BitswitchError(f"--kv-cache must be one of {', '.join(KV_CACHE_TYPES)}, got {self.kv_cache!r}")
        if self.flash_attention not in FLASH_ATTENTION:
            raise BitswitchError(f"--flash-attention must be one of {', '.join(FLASH_ATTENTION)}, got "
                                 f"{self.flash_attention!r}")
        for flag, path in (("--squad", self.squad), ("--wikitext", self.wikitext),
                           ("--reference-gguf", self.reference_gguf)):
            if path is not None and not Path(path).expanduser().is_file():
                raise BitswitchError(f"{flag} {path!r} is not a file: pass an existing file")
        if self.squad is None and self.wikitext is None and not self.speed_repeats:
            raise BitswitchError("nothing to compare: pass --squad and/or --wikitext (or keep --speed-repeats > 0)")
