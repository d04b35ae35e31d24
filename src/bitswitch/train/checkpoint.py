"""Atomic checkpoints and exact resume.

``OUT/checkpoint/`` holds the adapters (and observers), optimizer, LR scheduler, RNG states and
the step. It is written into a temporary sibling directory and swapped in by renames, so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

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


def save_checkpoint(out: str | Path, model, optimizer, scheduler, step: int, extra: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".checkpoint-"))
    try:
        save_file(adapter_state_dict(model), str(tmp / "adapters.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "state.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step, **(extra or {})}))
        final, old = out / CHECKPOINT, out / ".checkpoint-old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(run_dir: str | Path, model, optimizer, scheduler) -> int:
    """Restore adapters, optimizer, scheduler and RNG states; returns the step to continue from."""
    ck = Path(run_dir) / CHECKPOINT
    if not (ck / "step.json").is_file():
        raise BitswitchError(f"{str(run_dir)!r} has no complete checkpoint: pass the --out directory of a run "
                             "that saved one (--save-every)")
    load_adapter_state_dict(model, load_file(str(ck / "adapters.safetensors")))
    state = torch.load(ck / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((ck / "step.json").read_text())["step"]
