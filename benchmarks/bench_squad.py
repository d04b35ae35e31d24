"""SQuAD evaluation speed and the zero-/k-shot accuracy of uniform profiles.

Part 1 (speed, one run, same prompts): questions per second of bitswitch's batched KV-cache
generator against transformers ``generate`` one question at a time (goal: at least 2x); and the
whole evaluation pass (predictions and answer likelihood) as two passes (``greedy_generate`` then
``answer_nll``) against one (``generate_and_score``, what ``bitswitch eval`` runs).
Part 2 (quality): EM / F1 / answer perplexity of ``--profiles`` on the first ``--quality-limit``
dev questions, zero-shot and ``--shots``-shot (shots drawn from the train subset).

    python benchmarks/bench_squad.py --out benchmarks/results/squad.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import rel, write

import torch

import bitswitch as bs
from bitswitch.data.squad import PromptConfig, encode_prompts, load_squad
from bitswitch.evaluate.config import EvalConfig
from bitswitch.evaluate.generate import answer_nll, generate_and_score, greedy_generate
from bitswitch.evaluate.runner import run_eval

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad-v1.1"


def speed(model_spec, dev, speed_limit, batch_size, max_new_tokens, device):
    model, tok = bs.load_model(model_spec, device=device)
    examples = load_squad(dev, limit=speed_limit)
    prompts, _ = encode_prompts(tok, examples, PromptConfig(), 2048, reserve=max_new_tokens)
    t0 = time.perf_counter()
    batched = greedy_generate(model, tok, prompts, max_new_tokens, batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=model.device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, stop_strings=["\n"], tokenizer=tok,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).lstrip()
            single.append(text.split("\n", 1)[0].strip())
    t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single))
    n = len(prompts)
    rows = [{"what": "transformers generate, 1 question at a time", "questions": n, "seconds": t_single,
             "questions_per_s": n / t_single, "speedup": 1.0, "same_predictions": n},
            {"what": f"bitswitch batched generator (batch {batch_size})", "questions": n, "seconds": t_batched,
             "questions_per_s": n / t_batched, "speedup": t_single / t_batched, "same_predictions": same}]
    return rows + scoring_speed(model, tok, prompts, [ex.answers[0] for ex in examples], batch_size, max_new_tokens)


def scoring_speed(model, tok, prompts, answers, batch_size, max_new_tokens) -> list[dict]:
    """The evaluation pass (predictions + answer NLL): two prefills per prompt against one."""
    t0 = time.perf_counter()
    preds = greedy_generate(model, tok, prompts, max_new_tokens, batch_size)
    nll, _ = answer_nll(model, tok, prompts, answers, batch_size)
    t_two = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused, fused_nll, _ = generate_and_score(model, tok, prompts, answers, max_new_tokens, batch_size)
    t_one = time.perf_counter() - t0
    n = len(prompts)
    return [{"what": "eval pass: greedy_generate, then answer_nll", "questions": n, "seconds": t_two,
             "questions_per_s": n / t_two, "speedup": 1.0, "same_predictions": n, "nll_rel_diff": 0.0},
            {"what": "eval pass: generate_and_score (one prefill)", "questions": n, "seconds": t_one,
             "questions_per_s": n / t_one, "speedup": t_two / t_one,
             "same_predictions": sum(a == b for a, b in zip(preds, fused)),
             "nll_rel_diff": abs(fused_nll - nll) / abs(nll)}]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dev", default=rel(SHARED / "dev-part1-v1.1.json"))
    ap.add_argument("--train", default=rel(SHARED / "train-subset-v1.1.json"))
    ap.add_argument("--adapters", default=None)
    ap.add_argument("--speed-limit", type=int, default=64)
    ap.add_argument("--quality-limit", type=int, default=200)
    ap.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--runs", default="runs/bench_squad", help="where the eval runs write their results")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = [] if a.skip_speed else speed(a.model, a.dev, a.speed_limit, a.batch_size, a.max_new_tokens, a.device)
    if rows:
        write(None, rows, ["what", "questions", "seconds", "questions_per_s", "speedup", "same_predictions",
                           "nll_rel_diff"])
    quality = []
    for shots in [] if a.skip_quality else sorted({0, a.shots}):
        cfg = EvalConfig(model=a.model, task="squad", data=a.dev, adapters=a.adapters, profiles=a.profiles,
                         limit=a.quality_limit, shots=shots, train_data=a.train if shots else None,
                         batch_size=a.batch_size, max_new_tokens=a.max_new_tokens, device=a.device,
                         out=f"{a.runs}/{shots}shot")
        res = run_eval(cfg, log=print)
        quality += [{"shots": shots, **{k: r[k] for k in ("profile", "em", "f1", "answer_ppl", "n", "truncated",
                                                          "questions_per_s")}} for r in res["records"]]
    print()
    write(a.out, rows + quality, ["what", "shots", "profile", "em", "f1", "answer_ppl", "n", "questions_per_s",
                                  "speedup", "same_predictions", "nll_rel_diff"], model=a.model, quality_limit=a.quality_limit)


if __name__ == "__main__":
    main()
