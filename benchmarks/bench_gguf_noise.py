"""Why two engines' greedy answers differ: per-token log-probabilities of llama.cpp against bitswitch,
set beside bitswitch against itself with its inputs perturbed by one part in a million.

For each profile (no adapters; gguf grid; ``fp`` is exported with F32 tensors, so llama.cpp computes
in float32 and quantizes no activations), on the first ``--tokens`` WikiText-2 test tokens in windows
of ``--window``, teacher forced:

- ``llama.cpp``: mean |log p_llama.cpp(t) - log p_bitswitch(t)| over the scored tokens, for each llama.cpp
  context setting (KV cache f16 / f32, flash attention on / off);
- ``perturbed``: mean |log p_bitswitch'(t) - log p_bitswitch(t)| where bitswitch' multiplies its token
  embeddings by ``1 + rel * N(0, 1)`` (:func:`bitswitch.verify.noise.perturbed_inputs`);
- ``a8``: at a profile with a8, mean |log p(profile) - log p(profile without a8)|: the size of the
  activation quantization itself.

Where the llama.cpp column is no larger than the perturbed one, what remains between the engines is
rounding noise that quantized activations amplify, not a difference in the model.

    python benchmarks/bench_gguf_noise.py --out benchmarks/results/gguf_noise.json
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from common import rel, write

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETTINGS = [("f16", "off"), ("f32", "off"), ("f16", "on"), ("f32", "on")]
COLUMNS = ["profile", "export", "tokens", "perturbed", "a8", "llama_f16_off", "llama_f32_off", "llama_f16_on",
           "llama_f32_on", "ppl_bitswitch"]


def logprobs(model, ids, window: int):
    """log p(ids[i] | the window's earlier tokens) for every scored position (the first of each window
    is not scored), as a float64 tensor."""
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, ids.shape[0], window):
            x = ids[s:s + window][None]
            if x.shape[1] < 2:
                continue
            lp = torch.log_softmax(model(x).logits.double(), -1)[0]
            out.append(lp[:-1].gather(-1, x[0, 1:, None])[:, 0])
    return torch.cat(out)


def mean_abs(a, b) -> float:
    return float((a - b).abs().mean())


def run_profile(profile: str, a, ids) -> dict:
    import math

    import torch

    from bitswitch.export.gguf_export import export_gguf
    from bitswitch.export.prepare import prepare_for_export
    from bitswitch.llamacpp import LlamaCpp
    from bitswitch.models import smollm2_path
    from bitswitch.profiles import QuantOptions
    from bitswitch.switching import set_profile
    from bitswitch.verify.config import FLASH_ATTENTION
    from bitswitch.verify.noise import perturbed_inputs

    model, tok = prepare_for_export("smollm2-135m", None, profile, QuantOptions(weight_grid="gguf"), device="cpu")
    unquantized = "fp32" if profile == "fp" else "fp16"
    export = Path(a.work) / profile
    export_gguf(model, tok, profile, export, unquantized_dtype=unquantized, source_gguf=os.path.join(*smollm2_path()),
                meta={"command": "benchmarks/bench_gguf_noise.py"})
    ours = logprobs(model, ids, a.window)
    row = {"profile": profile, "export": f"{unquantized} unquantized", "tokens": int(ours.numel()),
           "ppl_bitswitch": math.exp(-float(ours.mean()))}
    with perturbed_inputs(model, a.rel, seed=0):
        row["perturbed"] = mean_abs(logprobs(model, ids, a.window), ours)
    if profile.endswith("a8"):
        set_profile(model, profile[:-2])
        row["a8"] = mean_abs(logprobs(model, ids, a.window), ours)
    for kv, fa in SETTINGS:
        with LlamaCpp(export / "model.gguf", threads=a.threads, context=a.window, kv_cache=kv,
                      flash_attention=FLASH_ATTENTION[fa]) as llm:
            theirs = []
            for s in range(0, ids.shape[0], a.window):
                chunk = ids[s:s + a.window].tolist()
                if len(chunk) >= 2:
                    theirs += llm.logprobs(chunk)
        row[f"llama_{kv}_{fa}"] = mean_abs(torch.tensor(theirs, dtype=torch.float64), ours)
        print(profile, kv, fa, row[f"llama_{kv}_{fa}"], flush=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["fp", "w8", "w8a8", "w4a8"])
    ap.add_argument("--wikitext", default=str(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--rel", type=float, default=1e-6, help="relative perturbation of the embeddings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench-gguf-noise", help="where the exports go (never committed)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    import torch

    from bitswitch.data.text import load_text, tokenize_text
    from bitswitch.models import load_model

    torch.set_num_threads(a.threads)
    _, tok = load_model("smollm2-135m", device="cpu")
    ids = tokenize_text(tok, load_text(a.wikitext), a.tokens)[0]
    rows = [run_profile(p, a, ids) for p in a.profiles]
    write(a.out, rows, COLUMNS, profiles=a.profiles, wikitext=rel(a.wikitext), tokens=a.tokens, window=a.window,
          rel=a.rel, threads=a.threads, cpu=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
