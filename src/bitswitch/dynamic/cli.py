"""``bitswitch generate --speculative LOW:HIGH --draft-k K [--draft-min-prob P]``: greedy text at
HIGH, drafted at LOW, on the packed runtime, one prompt at a time; the same result keys as plain
``bitswitch generate`` plus the acceptance of the drafts."""

from __future__ import annotations

import json

from ..generation import cut_text, read_prompts, speculative_pair
from ..io import atomic_write_text


def run_speculative(cfg, log=print) -> dict:
    """Speculative decoding of every prompt of ``cfg`` (a GenerateConfig with ``speculative`` set)."""
    import torch

    from ..runtime import Runtime
    from .runtime_engine import RuntimeEngine
    from .speculative import speculative_generate

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    low, high = speculative_pair(cfg.speculative)
    rt = Runtime.load(cfg.model, adapters=cfg.adapters, profiles=[high, low], options=cfg.options,
                      compile=cfg.compile, device=cfg.device, kv_dtype=cfg.kv_dtype)
    engine = RuntimeEngine(rt)
    prompts = read_prompts(cfg, rt.tokenizer)
    texts, runs = [], []
    for p in prompts:
        ids = rt.tokenizer(p).input_ids
        out = speculative_generate(engine, ids, low, high, cfg.draft_k, cfg.max_new_tokens,
                                   min_prob=cfg.draft_min_prob)
        texts.append(cut_text(rt.tokenizer.decode(out.tokens, skip_special_tokens=True), cfg.stop))
        runs.append(out)
    decode_s = sum(r.decode_s for r in runs)
    decoded = sum(max(len(r.tokens) - 1, 0) for r in runs)
    drafted, accepted = sum(r.drafted for r in runs), sum(r.accepted for r in runs)
    result = {"model": cfg.model, "adapters": cfg.adapters, "profile": f"{low}:{high}", "schedule": None,
              "speculative": {"low": low, "high": high, "draft_k": cfg.draft_k,
                              "draft_min_prob": cfg.draft_min_prob, "drafted": drafted,
                              "accepted": accepted, "acceptance": round(accepted / drafted, 4) if drafted else None,
                              "rounds": sum(r.rounds for r in runs)},
              "prompts": prompts, "texts": texts, "prompt_tokens": sum(len(rt.tokenizer(p).input_ids) for p in prompts),
              "new_tokens": sum(len(r.tokens) for r in runs), "prefill_s": round(sum(r.prefill_s for r in runs), 4),
              "decode_s": round(decode_s, 4),
              "decode_tokens_per_s": round(decoded / decode_s, 2) if decode_s > 0 else None,
              "resident_bytes": rt.resident_bytes(), "pack_count": rt.pack_count, "settings": cfg.settings()}
    if cfg.out:
        atomic_write_text(cfg.out, json.dumps(result, indent=1) + "\n")
    return result
