"""WikiText-2 test perplexity of SmolLM2-135M at low weight widths: round-to-nearest against grids
learned by block-wise reconstruction (``bitswitch prepare --recon``), one width at a time.
Calibration: distinct paragraphs of the SQuAD *training* subset; WikiText test is never seen.

    python benchmarks/bench_recon_ppl.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw \\
        --calib ../shared/data/squad-v1.1/train-subset-v1.1.json --specs w3g32 w2g32 --weight-asym \\
        --out benchmarks/results/recon_ppl.json
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts src/ on the path, relative argv)
import torch

from bitswitch.evaluate.scorers import load_text_ids, score_text
from bitswitch.io import atomic_write_json
from bitswitch.loading import load
from bitswitch.prepare.recon import recon_batches, recon_quantizers, recon_round
from bitswitch.quant.recon import learned_codes, search_grid
from bitswitch.profiles import QuantOptions
from bitswitch.switching import make_switchable, set_profile, state


def set_search_grids(model, spec: str) -> None:
    """Every block unit ``spec`` quantizes gets the clip-searched grid as its rounding (no training)."""
    for cfg, units in recon_quantizers(model, [spec]).items():
        for u in units:
            for name in state(model).units[u]:
                mod = model.get_submodule(name)
                w = mod.weight_out_in().detach().float()
                mod.set_rounding(cfg, *learned_codes(w, *search_grid(w, cfg), cfg))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--wikitext", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--specs", nargs="+", default=["w3g32", "w2g32"])
    p.add_argument("--weight-asym", action="store_true", help="asymmetric weight grids (a zero point per group)")
    p.add_argument("--seqs", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--scale-lr", type=float, default=2e-3)
    p.add_argument("--loss", choices=["mse", "channel", "token"], default="mse")
    p.add_argument("--init", choices=["rtn", "search"], default="search", help="starting grid of the reconstruction")
    p.add_argument("--max-blocks", type=int, default=None, help="reconstruct only the first blocks (timing)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t_all = time.time()
    model, tok = load(a.model, device="cpu")
    make_switchable(model, QuantOptions(weight_symmetric=not a.weight_asym))
    ids, window = load_text_ids(model, tok, a.wikitext, a.max_tokens, 0, a.window)
    batches = recon_batches(tok, a.calib, a.seqs, a.seq_len, a.batch_size)
    rows = []

    def measure(recipe: str, spec: str, extra: dict) -> None:
        t0 = time.time()
        set_profile(model, spec)
        r = score_text(model, ids, window)
        rows.append({"recipe": recipe, "profile": spec, "ppl": round(r["ppl"], 3), "tokens": r["tokens"],
                     "seconds": round(time.time() - t0, 1), **extra})
        print(rows[-1], flush=True)

    measure("fp", "fp", {})
    fp_ppl = rows[0]["ppl"]
    blocks = []
    for spec in a.specs:
        measure("rtn", spec, {})
        if a.init == "search":
            set_search_grids(model, spec)   # the starting point alone, before any training
            measure("search", spec, {})
        t0 = time.time()
        rec = recon_round(model, [spec], batches, epochs=a.epochs, lr=a.lr, scale_lr=a.scale_lr, loss=a.loss,
                          init=a.init, max_blocks=a.max_blocks)
        blocks.append({"profile": spec, "block_loss": rec["block_loss"]})
        measure("recon", spec, {"recon_seconds": round(time.time() - t0, 1), "calib_tokens": rec["tokens"]})
        if a.out:
            atomic_write_json(a.out, {"meta": {"partial": True}, "rows": rows, "blocks": blocks})
    for r in rows:
        r["x_fp"] = round(r["ppl"] / fp_ppl, 3)
    common.write(a.out, rows, ["recipe", "profile", "ppl", "x_fp", "tokens", "seconds", "recon_seconds"],
                 model=a.model, wikitext=common.rel(a.wikitext), calib=common.rel(a.calib), max_tokens=a.max_tokens,
                 window=window, threads=a.threads, weight_asym=a.weight_asym, seqs=a.seqs, seq_len=a.seq_len,
                 batch_size=a.batch_size, epochs=a.epochs, lr=a.lr, loss=a.loss, init=a.init, scale_lr=a.scale_lr, max_blocks=a.max_blocks,
                 blocks=blocks, total_seconds=round(time.time() - t_all, 1))


if __name__ == "__main__":
    main()
