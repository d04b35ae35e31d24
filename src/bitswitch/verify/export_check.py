"""Does a GGUF export hold what bitswitch is about to compare it with? One-line errors when not.

The manifest (``gguf_export.json``) names the profile and each unit's llama.cpp type; the model
switched to ``--profile`` with the same quantizer options must give the same names and types (a
``--weight-asym`` left out turns Q4_1 into Q4_0), an adapter file must exist exactly when adapters
are active, and its ``lora_a`` factors and alpha must be the active adapters'.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import BitswitchError
from ..export.gguf_arch import gguf_arch, name_map, tensor_name
from ..export.gguf_export import ADAPTER_FILE, FORMAT, MANIFEST, MODEL_FILE
from ..quant.gguf_grid import gguf_type
from ..switching import state, unit_modules


def read_manifest(export_dir: str) -> dict:
    """The manifest of a GGUF export directory (checked to hold ``model.gguf``)."""
    d = Path(export_dir).expanduser()
    if not d.is_dir():
        raise BitswitchError(f"--export {export_dir!r} is not a directory: pass the --out of "
                             "bitswitch export --format gguf")
    if not (d / MODEL_FILE).is_file() or not (d / MANIFEST).is_file():
        raise BitswitchError(f"--export {export_dir!r} has no {MODEL_FILE} and {MANIFEST}: pass the --out of "
                             "bitswitch export --format gguf")
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"{d / MANIFEST} cannot be read ({exc}): export again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("units"), dict):
        raise BitswitchError(f"{d / MANIFEST} is not a {FORMAT} manifest: export again with --format gguf")
    return manifest


def unit_types(model) -> dict[str, str | None]:
    """Each unit's llama.cpp type at the model's current profile (None: not weight-quantized)."""
    return {u: None if p.weight is None else gguf_type(p.weight.bits, p.weight.symmetric)
            for u, p in state(model).table.items()}


def check_export(manifest: dict, profile: str, types: dict[str, str | None], adapters_active: bool,
                 export_dir: str) -> None:
    """Raise a one-line :class:`BitswitchError` at the first way the export differs from the comparison:
    ``profile`` (the resolved name), ``types`` (:func:`unit_types`), whether adapters are active."""
    if manifest.get("profile") != profile:
        raise BitswitchError(f"--export {export_dir!r} was made at profile {manifest.get('profile')!r}, not "
                             f"{profile!r}: pass --profile {manifest.get('profile')!r} or export {profile!r}")
    got = {u: (t if t.startswith("Q") else None) for u, t in manifest["units"].items()}
    for unit in sorted(set(got) | set(types)):
        if got.get(unit) != types.get(unit):
            hint = " (--weight-asym makes w4 Q4_1)" if {got.get(unit), types.get(unit)} == {"Q4_0", "Q4_1"} else ""
            raise BitswitchError(f"--export {export_dir!r} stores {unit} as {got.get(unit) or 'unquantized'} but "
                                 f"--profile {profile!r} with these options gives "
                                 f"{types.get(unit) or 'unquantized'}{hint}: pass the export's quantizer options")
    has_file = (Path(export_dir).expanduser() / ADAPTER_FILE).is_file()
    if has_file != adapters_active:
        raise BitswitchError(f"--export {export_dir!r} {'has' if has_file else 'has no'} {ADAPTER_FILE} but "
                             f"bitswitch runs {profile!r} {'without' if has_file else 'with'} adapters: pass the "
                             "--adapters the export was made with" + ("" if has_file else " (or none)"))


def check_adapter(model, export_dir: str) -> None:
    """The export's ``lora_a`` factors and alpha equal the model's active adapters (fp16 rounding allowed)."""
    import gguf

    path = Path(export_dir).expanduser() / ADAPTER_FILE
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    cfg = model.config
    arch = gguf_arch(cfg)
    names = name_map(arch, cfg.num_hidden_layers if arch == "llama" else cfg.n_layer)
    for unit, name, mod in unit_modules(model):
        if mod.active_adapter is None:
            continue
        ad = mod.adapters[mod.active_adapter]
        key = tensor_name(names, f"{name}.weight") + ".lora_a"
        want = ad.lora_A.detach().float().cpu().numpy()
        got = stored.get(key)
        if got is None or got.shape != want.shape or not np.allclose(got.astype(np.float32), want, rtol=1e-3,
                                                                      atol=1e-6):
            raise BitswitchError(f"{path} holds another adapter than --adapters ({key} differs): pass the "
                                 "--adapters the export was made with")
        if not math.isclose(ad.scaling * want.shape[0], alpha, rel_tol=1e-6):
            raise BitswitchError(f"{path} has LoRA alpha {alpha:g}, --adapters {ad.scaling * want.shape[0]:g}: pass "
                                 "the --adapters the export was made with")
