"""Training memory: an estimate made before the first step, and the early refusal built on it.

A run that cannot fit should stop at setup with a one-line estimate and the options that would make
it fit, not be killed by the kernel half way (torchao QAT + peft LoRA on smollm2-135m, batches of 8,
was killed at 24 GB after ~75 steps). The estimate is made after the model is loaded, so it only
has to predict what training adds on top:

* activations kept for the backward pass, per token of the largest padded batch the run will see:
  ``layers * (A * hidden + B * intermediate + C * heads * tokens_per_row) * bytes`` -- linear in
  the hidden sizes, plus the attention matrix that grows with the row length;
* with ``checkpointing``, in theory only each block's input (``hidden`` per token and layer) plus
  one block's activations; measured on smollm2-135m (CPU, fp32) the per-token slope fell only to
  0.68x of the plain one (``CHECKPOINT_FACTOR``), so the estimate uses the measured factor;
* the LM head at supervised positions (answers) and a teacher's logits with distillation;
* adapters (and learned clips) with their gradients and AdamW moments (4 copies), and the quantized
  weight caches (1 byte per weight per distinct weight quantizer, see ``QuantLinear.weight_cache``);
* with full-weight QAT (``train_base: full``), each trained weight's gradient and two AdamW moments
  (3 copies), and the fake-quantized float copy every forward pass keeps for backward (one per pass
  alive at once).

A, B, C were fitted to the peak resident memory measured on smollm2-135m (fp32, CPU, the `random`
schedule, 30 steps at batches of 8 and 5 at 4 SQuAD examples, ``benchmarks/bench_train_step.py
--fit-batch 4``: 2.82 MiB per padded token) and rounded up (the estimate is 2% above that slope);
it is a planning figure, not a guarantee for every architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# bytes-per-element multipliers fitted on smollm2-135m (see the module docstring)
ACT_HIDDEN, ACT_INTER, ACT_ATTN = 16.0, 5.0, 2.5
CHECKPOINT_FACTOR = 0.68   # measured slope with --checkpointing over the slope without (1.91 / 2.82 MiB per token)
GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes training adds to the loaded model, by part, for the largest batch of the run."""

    activations: int
    head: int
    optimizer: int
    weight_caches: int
    batch_tokens: int        # padded tokens of the largest batch
    row_tokens: int          # its row length
    full_weights: int = 0    # full-weight QAT: gradients + AdamW moments + fake-quantized copies

    @property
    def total(self) -> int:
        return self.activations + self.head + self.optimizer + self.weight_caches + self.full_weights

    def describe(self) -> str:
        full = f", full weights' gradients + AdamW {size(self.full_weights)}" if self.full_weights else ""
        return (f"about {size(self.total)} on top of the loaded model (activations {size(self.activations)} "
                f"for batches of up to {self.batch_tokens} padded tokens, LM head {size(self.head)}, "
                f"adapters + AdamW {size(self.optimizer)}, quantized weight caches {size(self.weight_caches)}{full})")


def size(n: int) -> str:
    """Bytes as GiB (or MiB below 1 GiB), for messages."""
    return f"{n / GIB:.1f} GiB" if abs(n) >= GIB else f"{n / 2**20:.0f} MiB"


def _dims(config) -> tuple[int, int, int, int]:
    """(layers, hidden, intermediate, heads) of a GPT-2 or Llama-style config."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return layers, hidden, inter, heads


def activation_bytes(config, rows: int, row_tokens: int, elt: int, checkpointing: bool, passes: int = 1) -> int:
    """Activation bytes kept for backward for ``rows`` x ``row_tokens`` padded tokens.

    ``passes``: forward passes whose graphs live together (``all`` schedule: one per profile).
    """
    layers, hidden, inter, heads = _dims(config)
    tokens = rows * row_tokens
    per_layer_token = ACT_HIDDEN * hidden + ACT_INTER * inter + ACT_ATTN * heads * row_tokens
    full = passes * tokens * layers * per_layer_token * elt
    return int(full * CHECKPOINT_FACTOR) if checkpointing else int(full)


def estimate(model, cfg, batches, lengths: list[int], supervised: list[int], n_passes: int,
             n_weight_quantizers: int, adapter_params: int, base_params: int = 0) -> MemoryEstimate:
    """The estimate for a run: ``batches`` is the run's ``LengthGroupedBatches`` (every step's batch
    is looked at, so the largest one counts), ``supervised`` the supervised tokens per example;
    ``adapter_params`` counts adapters and clips, ``base_params`` the full weights that train."""
    steps = cfg.steps * cfg.grad_accum
    worst = (0, 0, 0)  # (padded tokens, rows, row length)
    sup = 0
    for s in range(steps):
        idx = batches.batch(s)
        row = max(lengths[i] for i in idx)
        worst = max(worst, (row * len(idx), len(idx), row))
        sup = max(sup, sum(supervised[i] for i in idx))
    elt = torch.finfo(next(model.parameters()).dtype).bits // 8
    distill = cfg.distill > 0 or cfg.hidden_mse > 0
    vocab = model.config.vocab_size
    # logits, log-softmax and its gradient at supervised positions (fp32), and the teacher's copy
    head = sup * vocab * 4 * (3 + (2 if distill else 0)) * n_passes
    unit_params = sum(m.out_features * m.in_features for n, m in model.named_modules()
                      if type(m).__name__ == "QuantLinear")
    return MemoryEstimate(
        activations=activation_bytes(model.config, worst[1], worst[2], elt, cfg.checkpointing, n_passes),
        head=int(head), optimizer=adapter_params * 4 * 4, weight_caches=unit_params * n_weight_quantizers * elt,
        batch_tokens=worst[0], row_tokens=worst[2],
        full_weights=base_params * 3 * 4 + base_params * elt * n_passes)


def available_bytes(device: torch.device) -> int:
    """Memory the run can still take: free CUDA memory, or the kernel's MemAvailable on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def parse_bytes(text: str) -> int:
    """'16GiB', '16GB', '16g', '500MiB', '1e9' -> bytes (binary units for G/M/K)."""
    t = str(text).strip().lower().replace(" ", "")
    for suffix, mult in (("gib", GIB), ("gb", GIB), ("g", GIB), ("mib", 1024**2), ("mb", 1024**2),
                         ("m", 1024**2), ("kib", 1024), ("kb", 1024), ("k", 1024), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(float(t))


def advice(model, cfg, est: MemoryEstimate, budget: int, n_passes: int) -> str:
    """The options that would make the run fit in ``budget`` bytes, as a short phrase."""
    fixed = est.head + est.optimizer + est.weight_caches + est.full_weights
    elt = torch.finfo(next(model.parameters()).dtype).bits // 8
    room = budget - fixed
    per_row = activation_bytes(model.config, 1, est.row_tokens, elt, cfg.checkpointing, n_passes)
    options = []
    rows = int(room // per_row) if room > 0 else 0
    if 1 <= rows < cfg.batch_size:
        options.append(f"--batch-size {rows} (or --max-batch-tokens {rows * est.row_tokens})")
    if not cfg.checkpointing:
        ck = activation_bytes(model.config, est.batch_tokens // max(est.row_tokens, 1), est.row_tokens, elt, True,
                              n_passes)
        if ck + fixed <= budget:
            options.append(f"--checkpointing (about {size(ck + fixed)}, steps ~45% slower)")
    if not options:
        options.append(f"a shorter --set max_length (now {cfg.max_length}) or a device with more memory")
    return " or ".join(options)


def check_fits(model, cfg, est: MemoryEstimate, device: torch.device, n_passes: int) -> None:
    """Raise a one-line ``BitswitchError`` when the estimate exceeds the memory the run may use
    (``cfg.max_memory`` when set, else what the device has available now)."""
    from ..errors import BitswitchError

    budget = parse_bytes(cfg.max_memory) if cfg.max_memory else available_bytes(device)
    if cfg.max_memory:  # a cap on the whole process: the loaded model counts against it
        from ..results import peak_rss_mb

        budget -= int(peak_rss_mb() * 1024**2) if device.type == "cpu" else torch.cuda.memory_allocated(device)
    if est.total <= budget:
        return
    where = f"max_memory {cfg.max_memory}" if cfg.max_memory else f"{device.type} memory available now"
    raise BitswitchError(f"this run needs {est.describe()}, but {where} leaves {size(max(budget, 0))}: "
                         f"use {advice(model, cfg, est, budget, n_passes)}")

