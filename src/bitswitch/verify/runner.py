"""Verify a GGUF export: llama.cpp and bitswitch's fake quantization of the same profile on the same inputs.

:func:`verify_gguf` loads the model at the profile (its adapters active), checks the export against
it (:mod:`.export_check`), runs :func:`compare` and writes ``verify.json`` + ``verify.md`` (and the
answers of both sides as ``answers.jsonl``) into ``cfg.out``. :func:`compare` takes an already
prepared model, for callers that export and verify in one process (``benchmarks/bench_gguf.py``).

- SQuAD: the same prompt ids (:func:`~bitswitch.data.squad.encode_prompts`) on both sides, greedy, one
  stop rule (:mod:`.llama_side`); identical answers, EM / F1 of each side, the paired F1 difference.
- WikiText: ``windows`` non-overlapping windows of ``window`` tokens, the same scored tokens on both
  sides (:func:`~bitswitch.evaluate.perplexity.perplexity` vs :meth:`LlamaCpp.perplexity`).
- Speed: llama.cpp decode tokens/s of the export beside ``reference_gguf`` at the same threads.
- Sizes: each file against its tensors at their formats' bits per weight (:mod:`.stats`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import BitswitchError
from ..export.gguf_export import ADAPTER_FILE, MODEL_FILE
from ..io import atomic_write_json, atomic_write_text
from ..results import markdown_table, run_metadata
from ..switching import state, unit_modules
from . import stats
from .config import FLASH_ATTENTION, VerifyConfig
from .export_check import check_adapter, check_export, read_manifest, unit_types
from .llama_side import decode_speed, llama_answer
from .noise import perturbed_inputs

ROUND = 256   # llama.cpp context sizes are rounded up to this many tokens


def verify_gguf(cfg: VerifyConfig, argv: list[str] | None = None, log=print) -> dict:
    """Load, check, :func:`compare`, write; returns the record written to ``cfg.out/verify.json``."""
    import torch

    from ..export.prepare import prepare_for_export
    from ..jobs import check_output_dir
    from ..llamacpp import require_llama_cpp

    read_manifest(cfg.export)
    require_llama_cpp()                      # no node: one line before the model is loaded
    check_output_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    options = dataclasses.replace(cfg.options, weight_grid="gguf")
    model, tok = prepare_for_export(cfg.model, cfg.adapters, cfg.profile, options, cfg.device, cfg.dtype, cfg.seed,
                                    cfg.calib_data)
    record = compare(model, tok, cfg, log)
    record["meta"] = run_metadata(argv, cfg.seed, settings=cfg.settings())
    write_report(record, cfg.out)
    log(summary_markdown([record]))
    return record


def compare(model, tok, cfg: VerifyConfig, log=print) -> dict:
    """Both engines on ``cfg``'s inputs; ``model`` is switchable and set to ``cfg.profile``."""
    from ..llamacpp import LlamaCpp, require_llama_cpp

    manifest = read_manifest(cfg.export)
    profile = state(model).profile.name
    active = any(m.active_adapter is not None for _, _, m in unit_modules(model))
    check_export(manifest, profile, unit_types(model), active, cfg.export)
    export = Path(cfg.export).expanduser()
    lora = export / ADAPTER_FILE if active else None
    if lora is not None:
        check_adapter(model, cfg.export)
    install = require_llama_cpp()
    record = {"profile": profile, "export": os.path.relpath(export), "tensor_types": manifest["tensor_types"],
              "adapter": active, "threads": cfg.threads, "sizes": _sizes(cfg, export),
              "llama_context": {"kv_cache": cfg.kv_cache, "flash_attention": cfg.flash_attention}}
    inputs = _inputs(model, tok, cfg)
    with LlamaCpp(export / MODEL_FILE, threads=cfg.threads, context=inputs["context"], lora=lora,
                  kv_cache=cfg.kv_cache, flash_attention=FLASH_ATTENTION[cfg.flash_attention],
                  install=install) as llm:
        if cfg.squad:
            record["squad"], record["answers"] = _squad(model, tok, llm, inputs, cfg)
        if cfg.wikitext:
            record["wikitext"] = _wikitext(model, llm, inputs, cfg)
        if cfg.speed_repeats:
            record["speed"] = {"export": decode_speed(llm, inputs["speed_prompt"], cfg.speed_tokens,
                                                      cfg.speed_repeats)}
    if cfg.speed_repeats:
        record["speed"].update(_other_speeds(cfg, export, active, inputs, install))
    record["goals"] = stats.goal_checks(flat_metrics(record))
    return record


def _inputs(model, tok, cfg: VerifyConfig) -> dict:
    """Prompt ids, gold answers, WikiText ids, the speed prompt and a llama.cpp context that holds them all."""
    from ..data.squad import PromptConfig, encode_prompts, load_squad
    from ..data.text import load_text, tokenize_text
    from ..evaluate.scorers import FALLBACK_CONTEXT, context_length

    out = {"examples": [], "prompts": [], "ids": None}
    need = cfg.speed_tokens + 2
    if cfg.squad:
        out["examples"] = load_squad(cfg.squad, split="validation", **cfg.squad_selection())
        out["prompts"], out["truncated"] = encode_prompts(tok, out["examples"], PromptConfig(),
                                                          context_length(model, FALLBACK_CONTEXT),
                                                          reserve=cfg.max_new_tokens)
        need = max(need, max(map(len, out["prompts"])) + cfg.max_new_tokens)
    if cfg.wikitext:
        out["ids"] = tokenize_text(tok, load_text(cfg.wikitext), cfg.windows * cfg.window)
        if out["ids"].shape[1] < 2:
            raise BitswitchError(f"--wikitext {cfg.wikitext!r} gives fewer than 2 tokens: pass more text")
        need = max(need, cfg.window)
    source = out["prompts"][0] if out["prompts"] else (out["ids"][0].tolist() if out["ids"] is not None else
                                                       tok("The capital of France is")["input_ids"])
    out["speed_prompt"] = source[:128]
    out["context"] = -(-(max(need, len(out["speed_prompt"]) + cfg.speed_tokens)) // ROUND) * ROUND
    return out


def _squad(model, tok, llm, inputs: dict, cfg: VerifyConfig) -> tuple[dict, list[dict]]:
    from ..evaluate.generate import _stop_ids
    from ..evaluate.scorers import score_squad
    from ..evaluate.squad_metrics import exact_match, f1

    examples, prompts = inputs["examples"], inputs["prompts"]
    n = len(prompts)
    t0 = time.perf_counter()
    with tqdm(total=n, desc=f"squad bitswitch {cfg.profile}", unit="q", disable=not cfg.progress) as bar:
        ours = score_squad(model, tok, prompts, examples, cfg.max_new_tokens, cfg.batch_size, progress=bar)
    t1 = time.perf_counter()
    stop_ids = _stop_ids(model, tok)

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    theirs = []
    for p in tqdm(prompts, desc=f"squad llama.cpp {cfg.profile}", unit="q", disable=not cfg.progress):
        theirs.append(llama_answer(llm, p, cfg.max_new_tokens, stop_ids, decode))
    t2 = time.perf_counter()
    floor = None
    if cfg.noise_floor:
        with perturbed_inputs(model, cfg.noise_floor, cfg.seed), \
                tqdm(total=n, desc=f"squad bitswitch {cfg.profile} perturbed", unit="q", disable=not cfg.progress) as bar:
            again = score_squad(model, tok, prompts, examples, cfg.max_new_tokens, cfg.batch_size, progress=bar)
        mine, perturbed = [r["prediction"] for r in ours["rows"]], [r["prediction"] for r in again["rows"]]
        floor = {"rel": cfg.noise_floor, "seconds": time.perf_counter() - t2,
                 "self_agreement": stats.agreement(mine, perturbed),
                 "llama_vs_perturbed": stats.agreement([t["text"] for t in theirs], perturbed)}
    answers = []
    for ex, mine, other in zip(examples, ours["rows"], theirs):
        answers.append({"id": ex.id, "bitswitch": mine["prediction"], "llama.cpp": other["text"],
                        "same": mine["prediction"] == other["text"], "em_bitswitch": mine["em"],
                        "f1_bitswitch": mine["f1"], "em_llama.cpp": exact_match(other["text"], ex.answers),
                        "f1_llama.cpp": f1(other["text"], ex.answers), "llama_stop": other["stop"]})
    f1_ll = [100 * a["f1_llama.cpp"] for a in answers]
    f1_bs = [100 * a["f1_bitswitch"] for a in answers]
    em_ll = [100 * a["em_llama.cpp"] for a in answers]
    em_bs = [100 * a["em_bitswitch"] for a in answers]
    stops: dict[str, int] = {}
    for a in answers:
        stops[a["llama_stop"]] = stops.get(a["llama_stop"], 0) + 1
    result = {"n": n, "truncated": inputs["truncated"], "max_new_tokens": cfg.max_new_tokens,
              "selection": cfg.squad_selection(),
              "agreement": stats.agreement([a["bitswitch"] for a in answers], [a["llama.cpp"] for a in answers]),
              "bitswitch": {"em": sum(em_bs) / n, "f1": sum(f1_bs) / n, "seconds": t1 - t0},
              "llama.cpp": {"em": sum(em_ll) / n, "f1": sum(f1_ll) / n, "seconds": t2 - t1},
              "d_f1": stats.paired_difference(f1_ll, f1_bs), "d_em": stats.paired_difference(em_ll, em_bs),
              "llama_stops": stops, "noise_floor": floor,
              "differing": [{k: a[k] for k in ("id", "bitswitch", "llama.cpp")} for a in answers if not a["same"]]}
    return result, answers


def _wikitext(model, llm, inputs: dict, cfg: VerifyConfig) -> dict:
    from ..evaluate.perplexity import perplexity

    ids = inputs["ids"]
    t0 = time.perf_counter()
    with tqdm(total=ids.shape[1], desc=f"wikitext bitswitch {cfg.profile}", unit="tok",
              disable=not cfg.progress) as bar:
        ours = perplexity(model, ids, window=cfg.window, progress=bar)
    t1 = time.perf_counter()
    with tqdm(total=ids.shape[1], desc=f"wikitext llama.cpp {cfg.profile}", unit="tok",
              disable=not cfg.progress) as bar:
        theirs = llm.perplexity(ids[0].tolist(), window=cfg.window, progress=bar)
    t2 = time.perf_counter()
    if ours["tokens"] != theirs["tokens"]:   # the protocols are one: a difference is a bug, not a result
        raise AssertionError(f"the engines scored {ours['tokens']} and {theirs['tokens']} tokens")
    return {"windows": -(-ids.shape[1] // cfg.window), "window": cfg.window, "tokens": ours["tokens"],
            "bitswitch": {"ppl": ours["ppl"], "nll": ours["nll"], "seconds": t1 - t0},
            "llama.cpp": {"ppl": theirs["ppl"], "nll": theirs["nll"], "seconds": t2 - t1},
            "rel_diff": stats.relative_difference(theirs["ppl"], ours["ppl"])}


def _other_speeds(cfg: VerifyConfig, export: Path, active: bool, inputs: dict, install) -> dict:
    """The export without its adapter (when it has one) and the reference GGUF, at the same threads."""
    from ..llamacpp import LlamaCpp

    rows = {}
    ref = cfg.reference_gguf or _default_reference(cfg.model)
    for name, path in (("export_no_adapter", export / MODEL_FILE if active else None), ("reference", ref)):
        if path is None:
            continue
        with LlamaCpp(path, threads=cfg.threads, context=inputs["context"], install=install) as llm:
            rows[name] = decode_speed(llm, inputs["speed_prompt"], cfg.speed_tokens, cfg.speed_repeats)
        if name == "reference":
            rows[name]["file"] = os.path.basename(path)
    return rows


def _default_reference(model: str) -> str | None:
    from ..models import smollm2_path

    return os.path.join(*smollm2_path()) if model == "smollm2-135m" else None


def _sizes(cfg: VerifyConfig, export: Path) -> dict:
    out = {}
    for name in (MODEL_FILE, ADAPTER_FILE):
        if (export / name).is_file():
            out[name] = gguf_size(export / name)
    ref = cfg.reference_gguf or _default_reference(cfg.model)
    if ref:
        out["reference"] = {**gguf_size(ref), "file": os.path.basename(ref)}
    return out


def gguf_size(path) -> dict:
    """A GGUF file's size against the theoretical size of its tensors (:func:`.stats.theoretical_bytes`)."""
    import gguf

    tensors = [(t.tensor_type.name, int(t.n_elements)) for t in gguf.GGUFReader(str(path)).tensors]
    theory = stats.theoretical_bytes(tensors)
    size = os.path.getsize(path)
    return {"file_bytes": size, "theoretical_bytes": theory["bytes"], "overhead_bytes": size - theory["bytes"],
            "quantized_bits_per_weight": theory["quantized_bits_per_weight"], "by_type": theory["by_type"]}


# -- the report ---------------------------------------------------------------------------------------

def flat_metrics(record: dict) -> dict:
    """One row of a record's headline numbers (None where a part was not run)."""
    sq, wt, sp, sz = (record.get(k) or {} for k in ("squad", "wikitext", "speed", "sizes"))
    model = sz.get(MODEL_FILE, {})
    return {"profile": record["profile"], "adapter": record["adapter"],
            "types": "+".join(sorted(t for t in record["tensor_types"] if t.startswith("Q"))),
            "n": sq.get("n"), "agreement": sq.get("agreement"),
            "self_agreement": (sq.get("noise_floor") or {}).get("self_agreement"),
            "em_bitswitch": sq.get("bitswitch", {}).get("em"), "em_llama": sq.get("llama.cpp", {}).get("em"),
            "f1_bitswitch": sq.get("bitswitch", {}).get("f1"), "f1_llama": sq.get("llama.cpp", {}).get("f1"),
            "d_f1": sq.get("d_f1", {}).get("mean"), "se_d_f1": sq.get("d_f1", {}).get("se"),
            "ppl_bitswitch": wt.get("bitswitch", {}).get("ppl"), "ppl_llama": wt.get("llama.cpp", {}).get("ppl"),
            "ppl_rel_diff": wt.get("rel_diff"),
            "decode_tok_s": sp.get("export", {}).get("decode_tok_s"),
            "decode_tok_s_no_adapter": sp.get("export_no_adapter", {}).get("decode_tok_s"),
            "ref_decode_tok_s": sp.get("reference", {}).get("decode_tok_s"),
            "model_bytes": model.get("file_bytes"), "theoretical_bytes": model.get("theoretical_bytes"),
            "adapter_bytes": sz.get(ADAPTER_FILE, {}).get("file_bytes")}


SUMMARY = ["profile", "types", "adapter", "n", "agreement", "self_agreement", "em_bitswitch", "em_llama", "f1_bitswitch", "f1_llama",
           "d_f1", "se_d_f1", "ppl_bitswitch", "ppl_llama", "ppl_rel_diff"]
SPEED_SIZE = ["profile", "decode_tok_s", "decode_tok_s_no_adapter", "ref_decode_tok_s", "model_bytes",
              "theoretical_bytes", "adapter_bytes"]


def summary_markdown(records: list[dict]) -> str:
    """Quality, speed and sizes, and the goals, one row per record (led by its ``row`` name when every
    record has one, as a benchmark's do)."""
    lead = ["row"] if records and all("row" in r for r in records) else []
    rows = [{**{k: r[k] for k in lead}, **flat_metrics(r)} for r in records]
    goals = [{**{k: r[k] for k in lead}, "profile": r["profile"], **g} for r in records for g in r["goals"]]
    return "\n\n".join([markdown_table(rows, lead + SUMMARY), markdown_table(rows, lead + SPEED_SIZE),
                        markdown_table(goals, lead + ["profile", "goal", "value", "target", "met"])])


def write_report(record: dict, out: str) -> None:
    """``verify.json`` (the record without the per-question answers), ``answers.jsonl``, ``verify.md``."""
    out_dir = Path(out)
    answers = record.pop("answers", None)
    if answers is not None:
        atomic_write_text(out_dir / "answers.jsonl", "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
    atomic_write_json(out_dir / "verify.json", record)
    atomic_write_text(out_dir / "verify.md", f"# GGUF verification: {record['profile']}\n\n"
                                             f"{summary_markdown([record])}\n")
