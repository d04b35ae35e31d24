"""Block-wise reconstruction of the frozen base at each width (EfficientQAT's Block-AP): a learned
grid per unit and quantizer, trained so that each quantized block reproduces the floating-point one.

For each weight quantizer the profiles use (``w3g32``, ``w2g32``, ``w4`` ...), one pass over the
blocks, in order. Block ``l`` sees the output of blocks ``0..l-1`` already rounded at that quantizer
(so it learns to correct the error they pass on), and its target is the floating-point block's output
on the floating-point stream (OmniQuant's and EfficientQAT's objective). A copy of each unit weight,
its scales and its zero points are trained by Adam on the mean squared error, through the
straight-through estimator (:mod:`bitswitch.quant.recon`); then the learned codes, scales and zeros
are set as the unit's rounding for that quantizer (``QuantLinear.set_rounding``), like GPTQ's.

The floating-point weights are never changed, so fp and every other width are untouched, and one
prepared directory holds a rounding per width. Fake quantization, training (LoRA on the frozen base),
export and the runtime then use the learned grids with ``--model DIR`` and no other flag.

Cost: ``epochs * len(batches)`` forward and backward passes of one block, per block and quantizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BitswitchError
from ..quant.config import WeightQuant
from ..quant.recon import INITS, init_grid, learned_codes, learned_fake_quantize, search_grid, supports_learned_grid
from ..switching import restore, set_unit_profiles, snapshot, state
from ..units import block_list
from .blocks import block_quantizers, catch_block_inputs, layer_units, run_block, weight_spec
from .plain import check_training_source, round_plain_model, source_name


def _check_learnable(cfg: WeightQuant) -> None:
    if not supports_learned_grid(cfg):
        raise ValueError(f"reconstruction learns uniform grids on the independent grid only, not w{cfg.bits} "
                         f"on the {cfg.grid} grid ({cfg.method})")


def recon_quantizers(model: nn.Module, profiles) -> dict[WeightQuant, list[str]]:
    """``{WeightQuant: [block unit, ...]}`` that ``profiles`` use at 2-8 bits (the LM head keeps round to
    nearest); a quantizer that cannot take a learned grid is a one-line BitswitchError."""
    found = block_quantizers(model, profiles, _check_learnable)
    if not found:
        raise BitswitchError("the profiles quantize no block-unit weight at 2-8 bits: nothing to reconstruct")
    return found


class _Learned:
    """One unit module's trainable copy: weight (out, in), scale and zero (out, groups)."""

    def __init__(self, name: str, mod: nn.Module, cfg: WeightQuant, init: str = "search"):
        self.name, self.mod, self.cfg = name, mod, cfg
        w = mod.weight_out_in().detach().float()
        self.weight = w.clone().requires_grad_(True)
        scale, zero = (search_grid if init == "search" else init_grid)(w, cfg)
        self.scale = scale.requires_grad_(True)
        self.zero = None if zero is None else zero.requires_grad_(True)
        self.start = [t.detach().clone() for t in self.params()]

    def params(self) -> list[torch.Tensor]:
        return [self.weight, self.scale] + ([] if self.zero is None else [self.zero])

    def reset(self) -> None:
        """Back to the starting grid (where training made the block's calibration loss worse)."""
        with torch.no_grad():
            for p, p0 in zip(self.params(), self.start):
                p.copy_(p0)

    def quantized(self) -> torch.Tensor:
        """The fake-quantized weight in the base layer's own layout and dtype."""
        wq = learned_fake_quantize(self.weight, self.scale, self.zero, self.cfg).to(self.mod.base.weight.dtype)
        return wq.t() if self.mod.conv1d else wq

    def set_rounding(self) -> None:
        self.mod.set_rounding(self.cfg, *learned_codes(self.weight, self.scale, self.zero, self.cfg))


LOSSES = ("mse", "channel", "token")


def channel_weights(targets: list[torch.Tensor], loss: str) -> torch.Tensor | None:
    """Per hidden channel loss weights (hidden,): ``channel`` divides each channel's squared error by
    its mean square in the fp targets, so that a few channels of huge magnitude (SmolLM2's residual
    stream carries one of ~1e4, which the next norm all but zeroes) do not drown the error of the
    others; other losses: None."""
    if loss != "channel":
        return None
    ms = sum(t.float().pow(2).sum(dim=(0, 1)) for t in targets) / sum(t.shape[0] * t.shape[1] for t in targets)
    return 1.0 / ms.clamp(min=1e-6 * float(ms.median()) + 1e-12)   # a dead channel: not infinitely heavy


def output_loss(out: torch.Tensor, target: torch.Tensor, loss: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The block output's error (B, T, hidden) against the fp target. ``mse``: mean squared error;
    ``channel``: each channel's squared error times ``weight`` (:func:`channel_weights`); ``token``:
    each token's squared error relative to its fp mean square -- what the next RMSNorm sees, since it
    divides every token by its RMS. On SmolLM2 the first token of a sequence (the attention sink)
    carries one channel of ~2e4 against ~1e2 elsewhere, so plain MSE is mostly that one token's error."""
    if loss == "mse":
        return F.mse_loss(out.float(), target.float())
    d2 = (out.float() - target.float()).pow(2)
    if loss == "channel":
        return (d2 * weight).mean()
    ms = target.float().pow(2).mean(-1, keepdim=True)
    return (d2 / ms.clamp(min=1e-12)).mean()


def _block_loss(block, learned, rel, hidden, kwargs, target, loss, weight) -> torch.Tensor:
    weights = {f"{rel[l.name]}.base.weight": l.quantized() for l in learned}
    out = torch.func.functional_call(block, weights, (hidden,), kwargs, strict=False)
    return output_loss(out[0] if isinstance(out, tuple) else out, target, loss, weight)


def _train_block(block, learned, rel, inputs, targets, epochs, lr, scale_lr, generator, loss, weight
                 ) -> tuple[float, float]:
    """Adam with a cosine decay over ``epochs`` passes of ``inputs`` (shuffled); returns the mean loss
    before training and after it, over every batch."""
    def mean_loss():
        with torch.no_grad():
            return sum(float(_block_loss(block, learned, rel, h, kw, t, loss, weight))
                       for (h, kw), t in zip(inputs, targets)) / len(inputs)

    before = mean_loss()
    groups = [{"params": [l.weight for l in learned], "lr": lr},
              {"params": [p for l in learned for p in (l.scale, l.zero) if p is not None], "lr": scale_lr}]
    opt = torch.optim.Adam(groups)
    total = epochs * len(inputs)
    step = 0
    for _ in range(epochs):
        for i in torch.randperm(len(inputs), generator=generator).tolist():
            decay = 0.5 * (1 + math.cos(math.pi * step / total))
            for g, base in zip(opt.param_groups, (lr, scale_lr)):
                g["lr"] = base * decay
            hidden, kwargs = inputs[i]
            value = _block_loss(block, learned, rel, hidden, kwargs, targets[i], loss, weight)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            step += 1
    return before, mean_loss()


def recon_round(model: nn.Module, profiles, batches, epochs: int = 2, lr: float = 2e-4, scale_lr: float = 2e-3,
                loss: str = "mse", init: str = "search", seed: int = 0, progress: bool = True,
                max_blocks: int | None = None) -> dict:
    """Learn a grid per block unit and weight quantizer ``profiles`` use and set it as the unit's rounding.
    ``model``: switchable (adapters ignored); ``batches``: calibration token ids, each (B, T) of one
    shape (text the evaluation never sees). ``loss``: ``mse``, ``channel`` or ``token``
    (:func:`output_loss`). ``init``: the starting grid, ``search`` (the
    clipped range of least weight error per group, :func:`~bitswitch.quant.recon.search_grid`; on
    SmolLM2 better at 2-3 bits, the same at 4) or ``rtn`` (round to nearest's min-max range); a block's ``loss_start`` is measured at that start. Returns a JSON-ready record
    with each block's loss at the start (on the rounded stream) and after training, and which grid it
    kept: the learned one, or the start where training raised the block's calibration loss (at 6-8 bits
    the default learning rates can overshoot a grid that is already close)."""
    from tqdm.auto import tqdm

    if epochs < 1:
        raise BitswitchError(f"--recon-epochs must be at least 1, got {epochs}")
    if loss not in LOSSES:
        raise BitswitchError(f"--recon-loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if init not in INITS:
        raise BitswitchError(f"--recon-init must be one of {', '.join(INITS)}, got {init!r}")
    if not (lr >= 0 and scale_lr >= 0):
        raise BitswitchError(f"reconstruction learning rates must be >= 0, got {lr} and {scale_lr}")
    found = recon_quantizers(model, profiles)
    batches = list(batches)
    if not batches:
        raise BitswitchError("reconstruction needs calibration text: no calibration batches were given")
    prefix, blocks, _ = block_list(model)
    blocks = blocks[:max_blocks] if max_blocks else blocks
    saved = snapshot(model)
    units = list(state(model).units)
    grads = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(seed)
    losses = {}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        set_unit_profiles(model, {u: "fp" for u in units}, adapters=False)
        first = catch_block_inputs(model, blocks, batches)
        bar = tqdm(total=len(found) * len(blocks), desc="recon", disable=not progress)
        for cfg, cfg_units in found.items():
            fp_in = [h for h, _ in first]
            q_in = list(fp_in)
            kwargs = [kw for _, kw in first]
            per_block = losses[weight_spec(cfg) + ("" if cfg.symmetric else "-asym")] = []
            for layer, blk in enumerate(blocks):
                lunits = [u for u in layer_units(model, layer) if u in cfg_units]
                with torch.no_grad():
                    targets = [run_block(blk, h, kw) for h, kw in zip(fp_in, kwargs)]
                names = [n for u in lunits for n in state(model).units[u]]
                block_name = f"{prefix}.{layer}."
                rel = {n: n[len(block_name):] for n in names}
                if any(not n.startswith(block_name) for n in names):
                    raise BitswitchError(f"block {layer}'s units are not inside {block_name!r}: cannot reconstruct it")
                learned = [_Learned(n, model.get_submodule(n), cfg, init) for n in names]
                if learned:
                    before, after = _train_block(blk, learned, rel, list(zip(q_in, kwargs)), targets, epochs, lr,
                                                 scale_lr, generator, loss,
                                                 channel_weights(targets, loss))
                    kept = "learned" if after < before else "start"   # never worse than the start on calibration
                    for l in learned:
                        if kept == "start":
                            l.reset()
                        l.set_rounding()
                    per_block.append({"block": layer, "loss_start": before, "loss_learned": after, "kept": kept})
                    bar.set_postfix(block=layer, loss=f"{before:.3g}->{after:.3g}")
                del learned
                if layer + 1 < len(blocks):
                    spec = {u: weight_spec(cfg) if u in lunits else "fp" for u in units}
                    set_unit_profiles(model, spec, adapters=False)
                    with torch.no_grad():
                        q_in = [run_block(blk, h, kw) for h, kw in zip(q_in, kwargs)]
                    set_unit_profiles(model, {u: "fp" for u in units}, adapters=False)
                    fp_in = targets
                bar.update(1)
        bar.close()
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
        restore(model, saved)
    return {"method": "recon", "loss": loss, "init": init, "epochs": epochs, "lr": lr, "scale_lr": scale_lr, "seed": seed,
            "batches": len(batches), "batch_shape": list(batches[0].shape),
            "tokens": int(sum(b.numel() for b in batches)),
            "quantizers": [{"spec": weight_spec(c), "symmetric": c.symmetric, "units": len(u)}
                           for c, u in found.items()],
            "block_loss": losses}


def recon_batches(tokenizer, source: str, seqs: int, seq_len: int, batch_size: int, seed: int = 0) -> list:
    """``seqs`` sequences of ``seq_len`` tokens, in (batch_size, seq_len) batches: the distinct
    paragraphs of SQuAD training text ``source`` (stratified over articles), joined by EOS and cut.
    Training text only: a file named like an evaluation split is refused."""
    from ..data.squad import load_squad

    check_training_source(source)
    for name, v in (("--recon-seqs", seqs), ("--recon-seq-len", seq_len), ("--recon-batch-size", batch_size)):
        if v < 1:
            raise BitswitchError(f"{name} must be at least 1, got {v}")
    if seqs % batch_size:
        raise BitswitchError(f"--recon-seqs ({seqs}) must be a multiple of --recon-batch-size ({batch_size})")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids, seen = [], set()
    for ex in load_squad(source, split="train", sample_seed=seed):
        if ex.context in seen:
            continue
        seen.add(ex.context)
        ids += tokenizer(ex.context, add_special_tokens=False)["input_ids"] + eos
        if len(ids) >= seqs * seq_len:
            break
    if len(ids) < seqs * seq_len:
        raise BitswitchError(f"{source!r} holds {len(ids)} tokens of distinct paragraphs, fewer than "
                             f"--recon-seqs x --recon-seq-len = {seqs * seq_len}")
    flat = torch.tensor(ids[:seqs * seq_len]).reshape(seqs, seq_len)
    return list(flat.split(batch_size))


def recon_step(model: nn.Module, tokenizer, profiles, calib_data: str, seqs: int = 128, seq_len: int = 512,
               batch_size: int = 4, epochs: int = 2, lr: float = 2e-4, scale_lr: float = 2e-3, loss: str = "mse",
               init: str = "search", weight_asym: bool = False, seed: int = 0) -> dict:
    """The ``recon`` preparation step on a plain model: wrap it, learn the grids, collect them as
    roundings, unwrap it, and leave them for :func:`~.writer.save_prepared` (with any earlier step's)."""
    batches = recon_batches(tokenizer, calib_data, seqs, seq_len, batch_size, seed)
    return round_plain_model(
        model, "recon", weight_asym,
        lambda m: recon_round(m, list(profiles), batches, epochs=epochs, lr=lr, scale_lr=scale_lr, loss=loss,
                              init=init, seed=seed),
        profiles=list(profiles), calib_data=source_name(calib_data))
