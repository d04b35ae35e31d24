"""``bitswitch verify-gguf``: run an export's model.gguf (+ adapter.gguf) in llama.cpp and bitswitch's fake
quantization of the same profile on the same inputs; report agreement, quality, perplexity, speed, sizes."""

from __future__ import annotations

import sys

from .args import add_model_args, add_quant_args, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("verify-gguf", help="compare a GGUF export run in llama.cpp with bitswitch's fake "
                                           "quantization of its profile (SQuAD answers, WikiText PPL, speed, sizes)")
    add_model_args(p)
    p.add_argument("--export", required=True, help="the --out of bitswitch export --format gguf")
    p.add_argument("--adapters", default=None, help="the adapter directory the export was made with")
    p.add_argument("--profile", required=True, help="the profile the export was made at")
    p.add_argument("--squad", default=None, help="SQuAD v1.1 dev JSON file (omit to skip SQuAD)")
    p.add_argument("--limit", type=int, default=None, help="SQuAD questions (default 200)")
    p.add_argument("--offset", type=int, default=0, help="skip the first N questions of --order")
    p.add_argument("--order", choices=["stratified", "file"], default="stratified",
                   help="question order: a seeded sample stratified over articles (default) or the file's")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer tokens at most (default 32)")
    p.add_argument("--batch-size", type=int, default=8, help="bitswitch's decoding batch")
    p.add_argument("--wikitext", default=None, help="WikiText-2 raw test file (omit to skip perplexity)")
    p.add_argument("--windows", type=int, default=None, help="WikiText windows (default 8)")
    p.add_argument("--window", type=int, default=None, help="tokens per window (default 256)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of both engines (default 1)")
    p.add_argument("--speed-tokens", type=int, default=None, help="tokens per timed generation (default 64)")
    p.add_argument("--speed-repeats", type=int, default=None, help="timed generations per file (default 3; 0 skips)")
    p.add_argument("--reference-gguf", default=None,
                   help="GGUF whose decode speed the export's is set beside (default: SmolLM2's Q4_1 file)")
    p.add_argument("--calib-data", default=None, help="SQuAD training file for static activation ranges")
    p.add_argument("--noise-floor", type=float, default=None, metavar="REL",
                   help="also answer with bitswitch's input embeddings perturbed by REL (e.g. 1e-6) and report "
                        "its agreement with itself: the ceiling of any two engines' agreement (default 0: skip)")
    p.add_argument("--kv-cache", choices=["f16", "f32"], default=None, help="llama.cpp's KV cache type (default f16)")
    p.add_argument("--flash-attention", choices=["auto", "on", "off"], default=None,
                   help="llama.cpp's flash attention (default auto)")
    p.add_argument("--out", default=None, help="directory for verify.json, verify.md, answers.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_quant_args(p)


def run(a, argv) -> int:
    from ..verify.config import VerifyConfig
    from ..verify.runner import verify_gguf

    cfg = config_from_args(VerifyConfig, a, progress=not a.no_progress)
    verify_gguf(cfg, argv, log=print)
    print(f"\nresults: {cfg.out}/verify.json", file=sys.stderr)
    return 0
