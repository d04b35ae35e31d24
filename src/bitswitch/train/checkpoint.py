"""Atomic, verified checkpoints and exact resume.

``OUT/checkpoint/`` holds the adapters (and learned clips, observers), optimizer, LR scheduler, RNG
states and the step, and with full-weight QAT the trained base weights (``weights.safetensors``). It is written into a temporary sibling directory (``.checkpoint-tmp-*``) and swapped in
by two renames: the complete checkpoint becomes ``.checkpoint-old``, the new one becomes
``checkpoint``, then the old one is removed. An interrupted save therefore always leaves a complete
checkpoint: ``checkpoint``, or ``.checkpoint-old`` when the crash fell between the two renames
(:func:`find_checkpoint` falls back to it, and the next save keeps it until a new one is in place).

``step.json`` is written last and records the sha256 of each tensor file; loading verifies them,
so flipped bytes are a one-line error rather than a crash or silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..adapters import adapter_state_dict, load_adapter_state_dict
from ..errors import BitswitchError

CHECKPOINT = "checkpoint"
OLD = ".checkpoint-old"         # the previous complete checkpoint while a new one is swapped in
TMP_PREFIX = ".checkpoint-tmp-"  # a checkpoint being written
FILES = ("adapters.safetensors", "state.pt")
WEIGHTS = "weights.safetensors"   # full-weight QAT only: the trained base weights by parameter name


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out: str | Path, model, optimizer, scheduler, step: int, extra: dict | None = None,
                    weights: dict | None = None) -> Path:
    """``weights``: ``{parameter name: tensor}`` of trained base weights (full-weight QAT), or None."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=TMP_PREFIX))
    try:
        save_file(adapter_state_dict(model), str(tmp / FILES[0]))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / FILES[1])
        names = FILES
        if weights:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
            names = (*FILES, WEIGHTS)
        digests = {}
        for name in names:
            _fsync(tmp / name)
            digests[name] = sha256_file(tmp / name)
        (tmp / "step.json").write_text(json.dumps({"step": step, **(extra or {}), "sha256": digests}))
        _fsync(tmp / "step.json")
        final, old = out / CHECKPOINT, out / OLD
        if final.is_dir():
            # the current checkpoint becomes the fallback; otherwise an earlier save stopped between
            # the renames and .checkpoint-old is still the last complete checkpoint: keep it
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in out.glob(f"{TMP_PREFIX}*"):   # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return final


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete every checkpoint in ``run_dir`` (a new run there must not resume an earlier one's)."""
    for d in [Path(run_dir) / CHECKPOINT, Path(run_dir) / OLD, *Path(run_dir).glob(f"{TMP_PREFIX}*")]:
        shutil.rmtree(d, ignore_errors=True)


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's last complete checkpoint directory (``checkpoint``, else ``.checkpoint-old``), or None."""
    for name in (CHECKPOINT, OLD):
        ck = Path(run_dir) / name
        if (ck / "step.json").is_file():
            return ck
    return None


def checkpoint_info(run_dir: str | Path) -> dict:
    """The verified metadata of the run's checkpoint (``step``, ``path``, ``sha256``); a one-line
    :class:`BitswitchError` when there is none or a file does not match its recorded digest."""
    ck = find_checkpoint(run_dir)
    if ck is None:
        raise BitswitchError(f"{str(run_dir)!r} has no complete checkpoint: pass the --out directory of a run "
                             "that saved one (--save-every)")
    try:
        meta = json.loads((ck / "step.json").read_text())
        step = meta["step"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BitswitchError(f"checkpoint {ck} is corrupt (unreadable step.json): delete it and start again, "
                             "or restore it from a copy") from None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise BitswitchError(f"checkpoint {ck} is corrupt (step {step!r} in step.json): delete it and start again")
    listed = [n for n in (meta.get("sha256") or {}) if n == WEIGHTS]
    for name in (*FILES, *listed):
        if not (ck / name).is_file():
            raise BitswitchError(f"checkpoint {ck} is corrupt ({name} is missing): delete it and start again")
        want = (meta.get("sha256") or {}).get(name)   # checkpoints written before digests have none
        if want is not None and sha256_file(ck / name) != want:
            raise BitswitchError(f"checkpoint {ck} is corrupt: {name} does not match the digest in step.json "
                                 "(sha256 mismatch); delete the checkpoint and start again, or restore it from a copy")
    return {**meta, "path": str(ck)}


def load_checkpoint(run_dir: str | Path, model, optimizer, scheduler, info: dict | None = None,
                    weights: dict | None = None) -> int:
    """Restore adapters, optimizer, scheduler and RNG states; returns the step to continue from.

    ``info``: what :func:`checkpoint_info` returned (verified already), else it is read now.
    ``weights``: ``{parameter name: parameter}`` of the trained base weights to restore in place
    (full-weight QAT); the checkpoint must hold exactly those.
    """
    info = info or checkpoint_info(run_dir)
    ck = Path(info["path"])
    if weights:
        if not (ck / WEIGHTS).is_file():
            raise BitswitchError(f"checkpoint {ck} holds no trained base weights ({WEIGHTS}): it is not from a "
                                 "train_base=full run; start a new --out")
        saved = load_file(str(ck / WEIGHTS))
        if set(saved) != set(weights) or any(saved[k].shape != weights[k].shape for k in weights):
            raise BitswitchError(f"{ck / WEIGHTS} does not hold this model's trained weights: resume the run that "
                                 "wrote it, or start a new --out")
        with torch.no_grad():
            for k, p in weights.items():
                p.copy_(saved[k])
    load_adapter_state_dict(model, load_file(str(ck / FILES[0])))
    state = torch.load(ck / FILES[1], weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return info["step"]
