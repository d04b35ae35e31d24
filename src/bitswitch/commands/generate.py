"""``bitswitch generate``: text through the switchable runtime at a profile or a per-token schedule."""

from __future__ import annotations

import sys

from .args import add_model_args, add_quant_args, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text through the low-bit runtime (int4/int8 CPU kernels)")
    add_model_args(p)
    p.add_argument("--adapters", default=None, help="adapter directory written by bitswitch train")
    p.add_argument("--profile", default="fp", help="the request's profile, e.g. w4g32 or w8a8")
    p.add_argument("--schedule", default=None,
                   help="per-token profiles, comma-separated and cycled (step 0 is the prefill), e.g. w4g32,w8")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for a batch)")
    p.add_argument("--data", default=None, help="prompts: SQuAD JSON (as eval renders them) or text, one per line")
    p.add_argument("--limit", type=int, default=None, help="--data: N prompts")
    p.add_argument("--offset", type=int, default=0, help="--data: skip N prompts")
    p.add_argument("--order", choices=["stratified", "file"], default="stratified", help="--data SQuAD: order")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="--engine runtime: torch.compile the one-token decode step (auto: where a C++ compiler "
                        "exists; the first step of each profile and batch size compiles, about a minute)")
    p.add_argument("--kv-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="the KV cache: float32 (as fake quantization keeps keys and values) or bfloat16 (half "
                        "the memory, logits no longer equal fake quantization's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--speculative", default=None, metavar="LOW:HIGH",
                   help="lossless self-speculative greedy decoding: draft at LOW, verify at HIGH, e.g. w4g32:w8")
    p.add_argument("--draft-k", type=int, default=4, help="--speculative: tokens drafted per verify forward")
    p.add_argument("--draft-min-prob", type=float, default=None, metavar="P",
                   help="--speculative: end a draft early, before a token LOW gives less than probability P "
                        "(adaptive draft length, up to --draft-k; the output is the same)")
    p.add_argument("--out", default="", help="also write texts and timings to this JSON file")
    add_quant_args(p)


def run(a, argv) -> int:
    from ..generation import GenerateConfig, run_generate

    schedule = [s.strip() for s in a.schedule.split(",")] if a.schedule else None
    cfg = config_from_args(GenerateConfig, a, schedule=schedule)
    if cfg.speculative:
        from ..dynamic.cli import run_speculative as run_generate   # noqa: F811 - same signature
    res = run_generate(cfg, log=lambda m: print(m, file=sys.stderr))
    for prompt, text in zip(res["prompts"], res["texts"]):
        print(text if len(res["texts"]) == 1 else f"--- {prompt[-60:]!r}\n{text}")
    speed = f", {res['decode_tokens_per_s']} tokens/s decoding" if res["decode_tokens_per_s"] else ""
    spec = res.get("speculative")
    accept = f", {spec['acceptance']} of drafts accepted (k={spec['draft_k']})" if spec else ""
    print(f"[{res['profile'] if not res['schedule'] else '/'.join(res['schedule'])}] prefill {res['prefill_s']} s"
          f"{speed}{accept}, resident weights {res['resident_bytes'].get('total', 0):,} bytes", file=sys.stderr)
    return 0
