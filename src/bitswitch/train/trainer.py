"""The switchable QAT loop: one adapter set per profile (or shared / per unit bits), trained on the
profiles a precision schedule picks, under accelerate (one process, or DDP under
``accelerate launch`` / ``torchrun``; only rank 0 writes).

Stopping and resuming are exact. SIGINT and SIGTERM only ask the loop to stop: the step under way
finishes, a checkpoint of the state after it is saved and :class:`Interrupted` is raised (a second
Ctrl-C stops at once, keeping the last checkpoint). A killed run resumes from its last checkpoint.
Either way ``--resume`` gives the losses and adapters of an uninterrupted run, bit for bit.
Non-finite losses or weights stop the run before anything non-finite is saved.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import (AdapterConfig, add_adapters, add_clips, adapter_parameters, clip_parameters, freeze_base,
                        save_adapters)
from ..errors import BitswitchError
from ..io import append_jsonl, atomic_write_json, atomic_write_text
from ..jobs import check_output_dir, settings_differences
from ..loading import is_exported, load
from ..models import context_length
from ..quant.clipping import project_
from ..norms import make_norms_quantizable, norm_bits_below, set_norm_bits
from ..results import peak_rss_mb, run_metadata
from ..roundings import maybe_attach
from ..switching import make_switchable, resolve_profile, set_profile, use_profile
from .checkpoint import (checkpoint_info, load_checkpoint, remove_checkpoints, rng_state, save_checkpoint,
                         set_rng_state)
from .config import TrainConfig
from .data import IGNORE, LengthGroupedBatches, collate, squad_examples, text_examples
from .full import MODEL_DIR, base_parameters, save_model
from .memory import check_fits
from .memory import estimate as estimate_memory
from .losses import cross_entropy, distill_kl, hidden_mse, supervised_forward
from .schedules import Schedule, _rng


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stopped before updating with it."""


class NonFiniteWeights(NonFiniteLoss):
    """An update made adapter weights NaN or inf; the run stopped before saving them.

    A subclass of :class:`NonFiniteLoss` so that whatever handles a diverged run (the CLI: one
    line, exit 1) handles both."""


class Interrupted(Exception):
    """A signal stopped the run; steps ``0 .. step - 1`` are done and checkpointed."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.signum = step, signum


# keys a resumed run may change: the operational ones (TrainConfig.UNHASHED: out, device, save and
# log intervals, memory bounds) and ``steps``, upward only. Every other key continues the saved run.
RESUME_MAY_CHANGE: tuple[str, ...] = ("steps", *TrainConfig.UNHASHED)


def check_resume(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """The verified checkpoint ``cfg`` resumes from; a one-line :class:`BitswitchError` when ``cfg``
    contradicts the run's saved ``config.yaml`` in a key outside :data:`RESUME_MAY_CHANGE`, or asks
    for fewer steps than the checkpoint holds."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        raise BitswitchError(f"--resume {str(run_dir)!r} has no config.yaml: pass the --out directory of a run")
    saved = TrainConfig.load(str(saved_path))
    diff = [d for d in settings_differences(saved.to_dict(), cfg.to_dict())
            if d.partition(":")[0] not in RESUME_MAY_CHANGE]
    if diff:
        raise BitswitchError(f"--resume continues the configuration saved in {saved_path}, but {'; '.join(diff)} "
                             f"(saved -> given): only {', '.join(RESUME_MAY_CHANGE)} may change (steps only "
                             "upward); drop the flag, or start a new --out to train with other settings")
    info = checkpoint_info(run_dir)
    if cfg.steps < info["step"]:
        raise BitswitchError(f"steps={cfg.steps} is below the {info['step']} steps the checkpoint in {run_dir} "
                             f"has trained: a resumed run continues, pass steps >= {info['step']}")
    return info


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


class Trainer:
    def __init__(self, cfg: TrainConfig, argv: list[str] | None = None, resume: bool = False, log=print):
        from accelerate import Accelerator, DistributedDataParallelKwargs

        if cfg.act_mode == "tensor":
            raise BitswitchError("training runs with per-token activations (act_mode token); static ranges "
                                 "are calibrated at evaluation (bitswitch eval --act-mode tensor)")
        self.cfg, self.argv, self.log, self.resume = cfg, argv, log, resume
        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        self.acc = Accelerator(cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.out = Path(cfg.out)
        self._stop: int | None = None    # the signal that asked the loop to stop
        self._updating = False          # the optimizer step of the current step has begun
        self.resume_info: dict | None = None
        self.truncated = 0
        self.tb = None   # a TensorBoard writer while run() runs, when TensorBoard is installed

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        torch.manual_seed(cfg.seed)
        model, tok = load(cfg.model, device=acc.device, dtype=cfg.dtype, seed=cfg.seed)
        if is_exported(model):
            raise BitswitchError(f"{cfg.model!r} is an export fixed at one profile: train the source model")
        make_switchable(model, cfg.options, cfg.keying)
        maybe_attach(model, cfg.model)   # a prepared directory's GPTQ roundings: adapters train on them
        blocks = [u for u in model.bitswitch.units if u != "head"]
        self.schedule = Schedule(cfg.schedule, list(cfg.profiles), cfg.steps, cfg.seed, cfg.cycles, cfg.b_min,
                                 cfg.b_max, cfg.family, cfg.schedule_order, list(cfg.candidates), blocks,
                                 avg_bits={p: _avg_bits(model, p) for p in cfg.profiles},
                                 continuous=cfg.continuous, fractional=cfg.fractional)
        if cfg.norm_offset > 0:
            make_norms_quantizable(model)   # at full precision until a step sets them below its width
        self.train_profiles = self.schedule.all_profiles()
        self.teacher = cfg.teacher or max(cfg.profiles or self.train_profiles, key=lambda p: _avg_bits(model, p))
        needed = self.train_profiles + ([self.teacher] if self._needs_teacher() else [])
        if cfg.lora:
            add_adapters(model, dict.fromkeys(needed), AdapterConfig(cfg.r, cfg.alpha, cfg.dropout, cfg.roles,
                                                                     cfg.seed))
        if cfg.learn_clip:   # one clip per unit module and weight quantizer the schedule (or teacher) uses
            add_clips(model, dict.fromkeys(needed))
        freeze_base(model)
        # what trains besides the adapters: learned clips, and with train_base full the block weights
        self.clips = list(clip_parameters(model)) if cfg.learn_clip else []
        self.base = base_parameters(model, cfg.train_bias) if cfg.train_base == "full" else []
        for p in self.clips + [p for _, p in self.base]:
            p.requires_grad_(True)
        if cfg.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ctx = context_length(model)
        max_length = min(cfg.max_length, ctx) if ctx else cfg.max_length
        if cfg.task == "squad":
            self.examples, self.truncated = squad_examples(tok, cfg.data, cfg.limit, max_length, offset=cfg.offset,
                                                           order=cfg.order, sample_seed=cfg.sample_seed)
            if self.truncated and acc.is_main_process:
                self.log(f"data: {self.truncated} of {len(self.examples)} prompts lost context words to fit "
                         f"{max_length} tokens (answers are kept whole)")
        else:
            self.examples = text_examples(tok, cfg.data, max_length, cfg.limit, cfg.offset)
        # said once the data has loaded: a bad data path must leave one error line, not a note before it
        if max_length < cfg.max_length and acc.is_main_process:
            self.log(f"max_length {cfg.max_length} is longer than the model's context: examples are cut to "
                     f"{max_length} tokens")
        self.batches = LengthGroupedBatches([len(e) for e in self.examples], cfg.batch_size, cfg.max_batch_tokens,
                                            cfg.seed)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        params = list(adapter_parameters(model))
        self.trainable = params + self.clips + [p for _, p in self.base]
        self.memory = self._memory_estimate(model, params + self.clips)
        if cfg.check_memory:
            check_fits(model, cfg, self.memory, acc.device, self._passes())
        if acc.is_main_process:
            self.log(f"memory: {self.memory.describe()}")
        groups = []   # the LambdaLR schedule scales each group's own lr
        if params:
            groups.append({"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
        if self.clips:   # factors in [0.25, 1]: no decay toward 0
            groups.append({"params": self.clips, "lr": cfg.clip_lr, "weight_decay": 0.0})
        if self.base:
            groups.append({"params": [p for _, p in self.base], "lr": cfg.base_lr, "weight_decay": cfg.weight_decay})
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.opt = acc.prepare(model, opt)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.tokenizer = tok
        self.start = 0
        if self.resume:
            self.start = load_checkpoint(self.out, self.inner, self.opt, self.sched, self.resume_info,
                                         weights=dict(self.base) or None)
            if acc.is_main_process:
                dropped = _truncate_metrics(self.out / "metrics.jsonl", self.start)
                if dropped:
                    self.log(f"resume: dropped {dropped} unreadable line(s) of metrics.jsonl (a write cut short)")
        elif acc.is_main_process:
            # what an earlier run left here describes that run: a later --resume must not continue it
            remove_checkpoints(self.out)
            for name in ("metrics.jsonl", "summary.json"):
                (self.out / name).unlink(missing_ok=True)
        if acc.is_main_process:
            cfg.save(self.out / "config.yaml")

    def _passes(self) -> int:
        """Forward graphs alive at once: every profile of an ``all`` step (+1 for consistency)."""
        per_step = len(self.train_profiles) if self.cfg.schedule == "all" else 1
        return per_step + (1 if self.cfg.consistency > 0 else 0)

    def _memory_estimate(self, model, params):
        weight_cfgs = {p.weight for prof in self.train_profiles for p in resolve_profile(model, prof)[1].values()
                       if p.weight is not None}
        return estimate_memory(model, self.cfg, self.batches, [len(e) for e in self.examples],
                               [sum(t != IGNORE for t in e.labels) for e in self.examples], self._passes(),
                               len(weight_cfgs), sum(p.numel() for p in params),
                               sum(p.numel() for _, p in self.base))

    @property
    def inner(self):
        return self.acc.unwrap_model(self.model)

    def _needs_teacher(self) -> bool:
        return self.cfg.distill > 0 or self.cfg.hidden_mse > 0

    # -- one step ----------------------------------------------------------------------------------
    def step_losses(self, batch: dict, profiles: list[str], step: int) -> dict[str, torch.Tensor]:
        cfg, model, inner = self.cfg, self.model, self.inner
        want_hidden = cfg.hidden_mse > 0
        teacher = None
        if self._needs_teacher() and any(p != self.teacher for p in profiles):
            if cfg.norm_offset > 0:
                set_norm_bits(inner, None)    # the teacher runs its norms at full precision
            with torch.no_grad(), use_profile(inner, self.teacher):
                teacher = supervised_forward(model, batch, hidden=want_hidden)
        parts: dict[str, list[torch.Tensor]] = {"ce": [], "kl": [], "mse": [], "consistency": []}
        total = 0.0
        for p in profiles:
            self._switch(p)
            logits, targets, hidden = supervised_forward(model, batch, hidden=want_hidden and p != self.teacher)
            loss = ce = cross_entropy(logits, targets)
            parts["ce"].append(ce.detach())
            if teacher is not None and p != self.teacher:
                if cfg.distill > 0:
                    kl = distill_kl(logits, teacher[0], cfg.temperature)
                    loss = loss + cfg.distill * kl
                    parts["kl"].append(kl.detach())
                if want_hidden:
                    n = len(hidden)
                    layers = list(range(1, n)) if cfg.hidden_layers == "all" else [_rng(cfg.seed, step).randrange(1, n)]
                    mse = hidden_mse(hidden, teacher[2], batch["attention_mask"], layers)
                    loss = loss + cfg.hidden_mse * mse
                    parts["mse"].append(mse.detach())
            if cfg.consistency > 0:
                other = self.schedule.at(step + 7_777_777)[0]   # an independent draw of the same schedule
                self._switch(other)
                logits_b, _, _ = supervised_forward(model, batch)
                cons = distill_kl(logits_b, logits, 1.0)
                loss = loss + cfg.consistency * cons
                parts["consistency"].append(cons.detach())
            total = total + loss
        out = {"loss": total / len(profiles)}
        out.update({k: torch.stack(v).mean() for k, v in parts.items() if v})
        return out

    def _switch(self, profile: str) -> None:
        """The step's profile, and with ``norm_offset`` its norms ``norm_offset`` bits below its width."""
        set_profile(self.inner, profile)
        if self.cfg.norm_offset > 0:
            set_norm_bits(self.inner, norm_bits_below(self.inner.bitswitch.table, self.cfg.norm_offset))

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        check_output_dir(self.cfg.out)
        if self.resume:
            self.resume_info = check_resume(self.cfg, self.out)
        self.setup()
        cfg, acc = self.cfg, self.acc
        world, rank = acc.num_processes, acc.process_index
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = tqdm(total=cfg.steps, initial=self.start, desc="train", disable=not acc.is_main_process,
                   dynamic_ncols=True)
        self.tb = _tensorboard(self.out / "tensorboard") if acc.is_main_process else None
        last = {}
        try:
            for step in range(self.start, cfg.steps):
                snapshot = rng_state()
                try:
                    last = self._train_step(step, world, rank)
                except KeyboardInterrupt:
                    # raised inside the step (a second Ctrl-C, or no handler of ours in this thread)
                    if self._updating:
                        raise   # the update had begun: keep the last checkpoint, as after a kill
                    set_rng_state(snapshot)            # the unfinished step will rerun identically
                    self.opt.zero_grad(set_to_none=True)
                    self._save(step)
                    raise Interrupted(step, signal.SIGINT) from None
                bar.update(1)
                bar.set_postfix(profile=_short(last["profile"]), loss=f"{last['loss']:.4f}",
                                tok_s=f"{last['tokens_per_s']:.0f}", rss_mb=f"{last['peak_rss_mb']:.0f}")
                done = step + 1
                stop = self._stop_requested()
                if stop or done % cfg.save_every == 0 or done == cfg.steps:
                    self._save(done)
                if stop:
                    raise Interrupted(done, self._stop)
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return self._finish(last)

    def estimate_seconds(self, timed_steps: int = 3) -> float:
        """Seconds a run of ``cfg.steps`` should take here: set up, take a warm-up step and
        ``timed_steps`` timed ones (in ``cfg.out``, which is not a run directory after this), and
        scale them by the padded tokens (batch x longest example) of every step's batches, known in
        advance, since batch lengths vary by a third around their mean."""
        self.setup()
        self._train_step(0, 1, 0)   # first-call allocations and kernel choices
        timed = range(1, timed_steps + 1)   # one step alone was off by up to 40% on a 2-core VM
        seconds = sum(float(self._train_step(s, 1, 0)["seconds"]) for s in timed)
        per_token = seconds / sum(self._padded_tokens(s) for s in timed)
        return per_token * sum(self._padded_tokens(s) for s in range(self.cfg.steps))

    def _padded_tokens(self, step: int) -> int:
        n = 0
        for micro in range(self.cfg.grad_accum):
            idx = self.batches.batch(step * self.cfg.grad_accum + micro)
            n += len(idx) * max(len(self.examples[i]) for i in idx)
        return n

    def _train_step(self, step: int, world: int, rank: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        profiles = self.schedule.at(step)
        sums: dict[str, float] = {}
        tokens = 0
        for micro in range(cfg.grad_accum):
            idx = self.batches.batch((step * cfg.grad_accum + micro) * world + rank)
            batch = collate([self.examples[i] for i in idx], self.pad_id, self.acc.device)
            tokens += int(batch["attention_mask"].sum())
            losses = self.step_losses(batch, profiles, step)
            if not torch.isfinite(losses["loss"]):
                raise NonFiniteLoss(f"loss is {losses['loss'].item()} at step {step} (profile {_short(profiles[0])}): "
                                    f"stopped before updating; the last good checkpoint in {self.out} is kept. "
                                    "Lower --lr or raise the weight bits")
            self.acc.backward(losses["loss"] / cfg.grad_accum)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() / cfg.grad_accum
        grad_norm = self.acc.clip_grad_norm_(self.trainable, cfg.max_grad_norm) \
            if cfg.max_grad_norm > 0 else torch.tensor(0.0)
        self._updating = True
        self.opt.step()
        for clip in self.clips:   # back into [CLIP_MIN, 1]: the factor's clamp never holds a dead gradient
            project_(clip)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self._check_finite(f"after the update of step {step} (profile {_short(profiles[0])}, "
                           f"lr {self.sched.get_last_lr()[0]:g})")
        seconds = time.perf_counter() - t0
        record = {"step": step, "profile": "|".join(profiles), **{k: round(v, 6) for k, v in sums.items()},
                  "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm), "tokens": tokens * world,
                  "tokens_per_s": tokens * world / seconds, "seconds": round(seconds, 3),
                  "peak_rss_mb": round(peak_rss_mb(), 1)}
        if self.acc.is_main_process and (step % cfg.log_every == 0 or step + 1 == cfg.steps):
            append_jsonl(self.out / "metrics.jsonl", record)
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tb.add_scalar(f"train/{k}", v, step)
        self._updating = False
        return record

    def _on_signal(self, signum, frame):
        if self._stop is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt   # a second Ctrl-C: stop now (the last checkpoint is kept)
        self._stop = signum           # the loop stops after the step under way

    def _stop_requested(self) -> bool:
        """Whether any process was asked to stop (all processes then stop after the same step)."""
        if self.acc.num_processes == 1:
            return self._stop is not None
        import torch.distributed as dist

        flag = torch.tensor([self._stop or 0], device=self.acc.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self._stop is None:
            self._stop = int(flag.item())
        return bool(flag.item())

    def _check_finite(self, when: str) -> None:
        """Raise :class:`NonFiniteWeights` if any trained tensor (adapters, clips, full weights) holds a NaN or inf."""
        params = self.trainable
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise NonFiniteWeights(f"{'adapter' if self.cfg.lora else 'trained'} weights are not finite {when}: stopped without saving them; the last "
                                   f"good checkpoint in {self.out} (if any) is kept. Lower --lr or raise the "
                                   "weight bits")

    def _save(self, step: int) -> None:
        self._check_finite(f"at the checkpoint of step {step}")
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_checkpoint(self.out, self.inner, self.opt, self.sched, step,
                            weights={n: p for n, p in self.base} or None)

    def _finish(self, last: dict) -> dict:
        summary = {**run_metadata(self.argv, self.cfg.seed), "steps": self.cfg.steps, "last": last,
                   "teacher": self.teacher, "profiles": self.train_profiles, "adapters": str(self.out / "adapters"),
                   "model": str(self.out / MODEL_DIR) if self.base else self.cfg.model,
                   "peak_rss_mb": round(peak_rss_mb(), 1),
                   "memory_estimate_mb": round(self.memory.total / 2**20, 1), "truncated_examples": self.truncated}
        self._check_finite("at the end of training")
        if self.acc.is_main_process:
            save_adapters(self.inner, self.out / "adapters", self.train_profiles)
            if self.base:   # the trained full weights: a plain model directory, --model OUT/model
                save_model(self.inner, self.tokenizer, self.out / MODEL_DIR)
            atomic_write_json(self.out / "summary.json", summary)
        self.acc.wait_for_everyone()
        return summary


def _tensorboard(path: Path):
    """A SummaryWriter when TensorBoard is installed, else None (metrics.jsonl always has everything)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def _avg_bits(model, profile: str) -> float:
    _, table = resolve_profile(model, profile)
    bits = [p.weight.bits if p.weight else 16 for u, p in table.items() if u != "head"]
    return sum(bits) / len(bits)


def _short(profile: str) -> str:
    return profile if len(profile) <= 24 else profile[:21] + "..."


def _truncate_metrics(path: Path, step: int) -> int:
    """Drop logged steps at or after ``step`` (they ran after the checkpoint and will run again) and
    unreadable lines (a line cut short by a kill); returns how many unreadable lines were dropped."""
    if not path.is_file():
        return 0
    keep, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if isinstance(logged, int) and logged < step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    return bad


def train(cfg: TrainConfig, argv: list[str] | None = None, resume: bool = False, log=print) -> dict:
    """Run a training job; returns the summary (also written to ``OUT/summary.json``)."""
    return Trainer(cfg, argv, resume, log).run()
