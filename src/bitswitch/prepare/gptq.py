"""GPTQ roundings of a model's frozen base for every weight quantizer some profiles use.

``gptq_round(model, profiles, batches)`` resolves the profiles against a switchable model, finds
each block unit's weight quantizers (``w4``, ``w3g32``, ... with the model's quantizer options),
and sets each unit module's GPTQ codes with ``QuantLinear.set_rounding``; fake quantization, export
and the runtime then use them wherever that quantizer runs, under any profile or adapter set.

Calibration runs block by block (the standard GPTQ layout, which keeps one block's inputs in memory,
never the whole model's activations): the inputs of block 0 are caught once, each block is run over
them with hooks collecting its units' input Hessians, its units are rounded, and the block's outputs
become the next block's inputs. ``sequential``:

* ``False`` (``fp``): the stream stays floating point; one pass serves every quantizer (each unit's
  Hessian is the same for all widths). Cheap.
* ``True``: one pass per quantizer, the stream run through the blocks already rounded at that
  quantizer, so block ``l``'s Hessian sees the inputs it will see when quantized (GPTQ as the paper
  runs it). Within a block the units see the block's floating-point function.

The LM head (unit ``head``) keeps round-to-nearest; a profile that quantizes it is not refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import BitswitchError
from ..quant.config import WeightQuant
from ..quant.gptq import HessianAccumulator, check_gptq_config, gptq_codes
from ..switching import restore, set_unit_profiles, snapshot, state
from ..units import block_list
from .blocks import block_quantizers, catch_block_inputs, layer_units, run_block, weight_spec
from .plain import check_training_source, round_plain_model, source_name


def quantizers_of(model: nn.Module, profiles) -> dict[WeightQuant, list[str]]:
    """``{WeightQuant: [block unit, ...]}`` GPTQ rounds for ``profiles``; a quantizer GPTQ cannot
    round on is refused with a one-line BitswitchError."""
    return block_quantizers(model, profiles, check_gptq_config)


def _hessians(model, block, units, inputs) -> dict[str, torch.Tensor]:
    """Each unit's input Hessian over the block run on ``inputs`` (a unit's modules share one input)."""
    st = state(model)
    accs, handles = {}, []
    for unit in units:
        first = model.get_submodule(st.units[unit][0])
        acc = accs[unit] = HessianAccumulator(first.in_features, device="cpu")
        handles.append(first.register_forward_hook(lambda mod, args, out, acc=acc: acc.add(args[0])))
    try:
        with torch.no_grad():
            for hidden, kwargs in inputs:
                run_block(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return {u: a.hessian() for u, a in accs.items()}


def _round_unit(model, unit: str, hessian: torch.Tensor, cfg: WeightQuant, block: int, damp: float,
                act_order: bool, refit_groups: bool = False) -> None:
    """GPTQ on a unit's modules stacked by rows (q/k/v, gate/up share an input, so a Hessian;
    rows are rounded independently given it), split back and set on each module."""
    mods = [model.get_submodule(n) for n in state(model).units[unit]]
    w = torch.cat([m.weight_out_in().detach().float() for m in mods], 0)
    codes, scale, zero = gptq_codes(w, hessian.to(w.device), cfg, block=block, damp=damp, act_order=act_order,
                                    refit_groups=refit_groups and cfg.group_size is not None)
    start = 0
    for m in mods:
        end = start + m.out_features
        m.set_rounding(cfg, codes[start:end], scale[start:end], None if zero is None else zero[start:end])
        start = end


def gptq_round(model: nn.Module, profiles, batches, sequential: bool = True, block: int = 128, damp: float = 0.01,
               act_order: bool = False, progress: bool = True, max_blocks: int | None = None,
               refit_groups: bool = False) -> dict:
    """Set GPTQ roundings on ``model`` (switchable, adapters ignored) for every block-unit weight
    quantizer ``profiles`` use; ``batches``: calibration token ids, each (1, T) (text the evaluation
    never sees). ``max_blocks``: round only the first blocks (what ``demo`` times to estimate the
    whole). ``refit_groups``: grouped grids are fitted as rounding reaches each group (see
    :func:`~bitswitch.quant.gptq.gptq_codes`). Returns a JSON-ready record: quantizers, units, tokens, mode."""
    from tqdm.auto import tqdm

    found = quantizers_of(model, profiles)
    if not found:
        raise BitswitchError("the profiles quantize no block-unit weight at 2-8 bits: nothing for GPTQ to round")
    batches = list(batches)
    if not batches:
        raise BitswitchError("GPTQ needs calibration text: no calibration batches were given")
    _, blocks, _ = block_list(model)
    blocks = blocks[:max_blocks] if max_blocks else blocks
    saved = snapshot(model)
    units = list(state(model).units)
    try:
        set_unit_profiles(model, {u: "fp" for u in units}, adapters=False)
        first = catch_block_inputs(model, blocks, batches)
        passes = list(found.items()) if sequential else [(None, None)]
        bar = tqdm(total=len(passes) * len(blocks), desc="gptq", disable=not progress)
        for cfg_of_pass, _ in passes:
            inputs = first
            for layer, blk in enumerate(blocks):
                lunits = layer_units(model, layer)
                hess = _hessians(model, blk, lunits, inputs)
                todo = [(cfg_of_pass, found[cfg_of_pass])] if sequential else list(found.items())
                for cfg, cfg_units in todo:
                    for unit in lunits:
                        if unit in cfg_units:
                            _round_unit(model, unit, hess[unit], cfg, block, damp, act_order, refit_groups)
                if layer + 1 < len(blocks):
                    if sequential:   # the next block sees this block's output with its units quantized
                        spec = {u: weight_spec(cfg_of_pass) if u in found[cfg_of_pass] else "fp" for u in lunits}
                        set_unit_profiles(model, {u: spec.get(u, "fp") for u in units}, adapters=False)
                    with torch.no_grad():
                        inputs = [(run_block(blk, h, kw), kw) for h, kw in inputs]
                    set_unit_profiles(model, {u: "fp" for u in units}, adapters=False)
                bar.update(1)
        bar.close()
    finally:
        restore(model, saved)
    return {"method": "gptq", "hessians": "sequential" if sequential else "fp",
            "block": block, "damp": damp, "act_order": act_order, "refit_groups": refit_groups,
            "batches": len(batches),
            "tokens": int(sum(b.numel() for b in batches)),
            "quantizers": [{"spec": weight_spec(c), "symmetric": c.symmetric, "units": len(u)}
                           for c, u in found.items()]}


def calibration_ids(tokenizer, source: str, questions: int, max_length: int = 512, seed: int = 0) -> list:
    """(1, T) id tensors of the prompts (context + question) of ``questions`` SQuAD questions of
    ``source``, stratified over its articles. Training text only: a file named like an evaluation
    split (``dev``, ``test``, ``valid``) is refused, since the roundings would be fitted to it."""
    from ..data.squad import calibration_batches, load_squad

    check_training_source(source)
    if questions < 1:
        raise BitswitchError(f"--calib-questions must be at least 1, got {questions}")
    examples = load_squad(source, split="train", limit=questions, sample_seed=seed)
    return calibration_batches(tokenizer, examples, questions, max_length=max_length)


def gptq_step(model: nn.Module, tokenizer, profiles, calib_data: str, calib_questions: int = 128,
              hessians: str = "sequential", weight_asym: bool = False, block: int = 128, damp: float = 0.01,
              act_order: bool = False, max_length: int = 512, seed: int = 0) -> dict:
    """The ``gptq`` preparation step on a plain model: wrap it, round, collect the roundings, unwrap
    it (the saved model stays a standard one), and leave the roundings on ``model`` for
    :func:`~.writer.save_prepared` to write beside it (:mod:`bitswitch.roundings`)."""
    if hessians not in ("fp", "sequential"):
        raise BitswitchError(f"--gptq-hessians must be fp or sequential, got {hessians!r}")
    batches = calibration_ids(tokenizer, calib_data, calib_questions, max_length, seed)
    return round_plain_model(
        model, "gptq", weight_asym,
        lambda m: gptq_round(m, list(profiles), batches, sequential=hessians == "sequential", block=block,
                             damp=damp, act_order=act_order),
        profiles=list(profiles), calib_data=source_name(calib_data), calib_questions=calib_questions)
