"""``bitswitch demo``, the main job: train switchable LoRA adapters on SQuAD with the ``random``
schedule over the profiles, then evaluate every profile on dev questions from the same model.

Sized by default for about 20 minutes on 2 CPU cores with SmolLM2-135M; raise ``steps`` and
``eval_limit`` on a GPU.
"""

from __future__ import annotations

from pathlib import Path

from .evaluate.config import EvalConfig
from .evaluate.runner import run_eval
from .models import resolve_device
from .train.checkpoint import find_checkpoint
from .train.config import TrainConfig
from .train.trainer import train


def run_demo(model: str = "smollm2-135m", train_data: str = "squad", dev_data: str = "squad",
             profiles=("fp", "w8a8", "w6a8", "w4a8"), steps: int = 60, batch_size: int = 8, lr: float = 1e-3,
             eval_limit: int = 50, device: str = "auto", out: str = "runs/demo", argv=None, log=print) -> dict:
    resolve_device(device)   # a device this machine lacks fails now, not after training fell back to the CPU
    out_dir = Path(out)
    # one adapter shared by every profile: on SmolLM2 it beat per-profile adapters at every profile
    # (docs/results.md), since each profile's adapter would see only a quarter of the steps
    cfg = TrainConfig(model=model, data=train_data, profiles=list(profiles), schedule="random", keying="shared",
                      steps=steps,
                      batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 10), save_every=max(1, steps // 3),
                      device=device, out=str(out_dir / "train"), max_length=384)
    resume = find_checkpoint(out_dir / "train") is not None and not (out_dir / "train" / "summary.json").is_file()
    if (out_dir / "train" / "summary.json").is_file():
        log(f"training already finished in {out_dir / 'train'}: reusing its adapters")
    else:
        train(cfg, argv, resume=resume, log=log)
    ev = EvalConfig(model=model, task="squad", data=dev_data, adapters=str(out_dir / "train" / "adapters"),
                    profiles=list(profiles), limit=eval_limit, device=device, out=str(out_dir / "eval"),
                    max_new_tokens=24)
    res = run_eval(ev, argv, log=log)
    return {"table": res["table"], "results": str(out_dir / "eval" / "results.json"),
            "plot": res["artifacts"][0] if res.get("artifacts") else None}
