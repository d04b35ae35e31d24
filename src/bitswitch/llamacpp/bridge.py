"""llama.cpp from Python: one ``node`` process running ``run.mjs`` (node-llama-cpp), spoken to in JSON lines.

    with LlamaCpp(gguf, threads=2) as llm:
        ids = llm.tokenize("The capital of France is")
        out = llm.generate(ids, max_new_tokens=32)      # {tokens, text, prefill_s, decode_s, ...}
        lp = llm.logprobs(ids)                          # log p(ids[i] | ids[:i]), i >= 1
        llm.perplexity(ids, window=512)                 # {ppl, nll, tokens}

Timing: ``prefill_s`` runs from the start of the prompt's evaluation to the first new token (the
prompt's forward and one sampling), ``decode_s`` from there to the last new token, so decode covers
``new_tokens - 1`` steps. A context opened with ``sequences=B`` decodes up to B prompts together
(:meth:`LlamaCpp.generate_batch`): node-llama-cpp queues every sequence's tokens into one
``llama_decode`` per step.

Every failure (a bad GGUF, a bad LoRA, tokens out of range, the process dying) is a one-line
:class:`BitswitchError`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import BitswitchError
from .install import LlamaCppInstall, find_llama_cpp, require_llama_cpp
from .protocol import NodeProcess

__all__ = ["KV_CACHE_TYPES", "LlamaCpp", "LlamaCppInstall", "find_llama_cpp", "require_llama_cpp"]


# bitswitch's names for the KV cache's types -> ggml's, as node-llama-cpp takes them
KV_CACHE_TYPES = {"f16": "F16", "f32": "F32"}


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BitswitchError(f"llama.cpp {name} must be an integer >= {minimum}, got {value!r}")
    return value


class LlamaCpp:
    """One llama.cpp model + context in a node process (started here, ended by :meth:`close` / ``with``).

    ``threads``: CPU threads for every evaluation; ``context``: tokens per sequence; ``sequences``:
    how many prompts :meth:`generate_batch` may decode together; ``lora``: a GGUF LoRA adapter file
    applied at ``lora_scale``; ``kv_cache``: the type of the cached keys and values, ``"f16"``
    (llama.cpp's default) or ``"f32"`` (what bitswitch's own attention keeps, for comparisons);
    ``flash_attention``: True / False, or None for node-llama-cpp's choice (``"auto"``).
    """

    def __init__(self, gguf_path, threads: int = 2, context: int = 2048, lora=None, lora_scale: float = 1.0,
                 sequences: int = 1, kv_cache: str = "f16",
                 flash_attention: bool | None = None, install: LlamaCppInstall | None = None):
        if kv_cache not in KV_CACHE_TYPES:
            raise BitswitchError(f"llama.cpp kv_cache must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache!r}")
        if flash_attention not in (None, True, False):
            raise BitswitchError(f"llama.cpp flash_attention must be True, False or None, got {flash_attention!r}")
        self.threads = _positive_int("threads", threads)
        _positive_int("context", context, 16)
        self.sequences = _positive_int("sequences", sequences)
        if not isinstance(lora_scale, (int, float)) or not math.isfinite(lora_scale):
            raise BitswitchError(f"llama.cpp lora_scale must be a finite number, got {lora_scale!r}")
        gguf = Path(gguf_path).expanduser()
        if not gguf.is_file():
            raise BitswitchError(f"GGUF file {gguf} does not exist: pass the path of a .gguf model file")
        if lora is not None and not Path(lora).expanduser().is_file():
            raise BitswitchError(f"LoRA file {lora} does not exist: pass the path of a GGUF LoRA adapter")
        self._node = NodeProcess(install or require_llama_cpp())
        try:
            info = self._call("load", gguf=str(gguf.resolve()), threads=threads, context=context,
                              sequences=sequences, lora=str(Path(lora).expanduser().resolve()) if lora else None,
                              lora_scale=float(lora_scale), kv_cache=KV_CACHE_TYPES[kv_cache],
                              flash_attention=flash_attention)
        except BaseException:
            self.close()
            raise
        self.n_vocab: int = info["n_vocab"]
        self.context: int = info["context"]
        self.info = info

    def _call(self, op: str, **args):
        return self._node.call(op, **args)

    def close(self) -> None:
        """End the node process (idempotent)."""
        self._node.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checks ---------------------------------------------------------------------------------

    def _tokens(self, tokens, what: str = "tokens", minimum: int = 1) -> list[int]:
        tokens = list(tokens)
        if len(tokens) < minimum:
            raise BitswitchError(f"llama.cpp {what} need at least {minimum} token(s), got {len(tokens)}")
        bad = next((t for t in tokens if not isinstance(t, int) or isinstance(t, bool)
                    or not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise BitswitchError(f"llama.cpp {what} hold {bad!r}, not a token id in 0..{self.n_vocab - 1}")
        return tokens

    def _fits(self, n: int, what: str) -> None:
        # past the context node-llama-cpp would shift it silently, changing what the model sees
        if n > self.context:
            raise BitswitchError(f"{what} ({n} tokens) exceed the llama.cpp context of {self.context} tokens: "
                                 "open LlamaCpp with a larger context")

    # -- API ------------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text`` (no BOS added; ``special``: special-token text becomes those tokens, as
        a Hugging Face tokenizer does by default)."""
        if not isinstance(text, str):
            raise BitswitchError(f"llama.cpp tokenize needs a string, got {type(text).__name__}")
        return self._call("tokenize", text=text, special=bool(special))

    def detokenize(self, tokens) -> str:
        return self._call("detokenize", tokens=self._tokens(tokens, minimum=0))

    def generate_batch(self, prompts, max_new_tokens: int, greedy: bool = True, stop=None,
                       min_new_tokens: int = 0, eos: bool = True, seed: int = 0) -> dict:
        """Decode every prompt of ``prompts`` (at most ``sequences``) together.

        Returns ``{tokens: [[...]], texts, prompt_tokens: [...], new_tokens: [...], prefill_s, decode_s}``.
        ``min_new_tokens`` forbids end-of-generation tokens until that many are out; ``eos`` stops a
        row at one after that; ``stop``: strings that end a row once its text holds one (its text is
        cut before it, its tokens keep all that was generated). Sampling (``greedy=False``) draws from
        the full softmax with ``seed + row``.
        """
        prompts = [self._tokens(p, "prompt tokens") for p in prompts]
        if not 1 <= len(prompts) <= self.sequences:
            raise BitswitchError(f"llama.cpp generate needs 1..{self.sequences} prompts (the context's sequences), "
                                 f"got {len(prompts)}: open LlamaCpp with sequences={max(len(prompts), 1)}")
        _positive_int("max_new_tokens", max_new_tokens)
        if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
            raise BitswitchError(f"min_new_tokens must be an integer in 0..max_new_tokens ({max_new_tokens}), "
                                 f"got {min_new_tokens!r}")
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) and s for s in stop):
            raise BitswitchError(f"llama.cpp stop strings must be non-empty strings, got {stop!r}")
        for p in prompts:
            self._fits(len(p) + max_new_tokens, "prompt + max_new_tokens")
        return self._call("generate", prompts=prompts, max_new_tokens=max_new_tokens,
                          min_new_tokens=min_new_tokens, greedy=bool(greedy), seed=int(seed), stop=stop,
                          eos=bool(eos))

    def generate(self, tokens, max_new_tokens: int, greedy: bool = True, stop=None, min_new_tokens: int = 0,
                 eos: bool = True, seed: int = 0) -> dict:
        """One prompt (batch 1): ``{tokens, text, prefill_s, decode_s, prompt_tokens, new_tokens}``
        (see :meth:`generate_batch` for the options and the module docstring for the timing)."""
        out = self.generate_batch([tokens], max_new_tokens, greedy, stop, min_new_tokens, eos, seed)
        return {"tokens": out["tokens"][0], "text": out["texts"][0], "prefill_s": out["prefill_s"],
                "decode_s": out["decode_s"], "prompt_tokens": out["prompt_tokens"][0],
                "new_tokens": out["new_tokens"][0]}

    def logprobs(self, tokens) -> list[float]:
        """``log p(tokens[i] | tokens[:i])`` for ``i = 1 .. len(tokens) - 1`` (the first token has no
        prefix), from one evaluation of ``tokens[:-1]`` with logits at every position.

        Each position returns llama.cpp's full next-token distribution (a float32 softmax of the raw
        logits over the vocabulary) to node, which picks one entry: ~30 ms a position, so this is
        for short texts and windows, not for bulk scoring.
        """
        tokens = self._tokens(tokens, minimum=2)
        self._fits(len(tokens) - 1, "logprobs input")
        return self._call("logprobs", tokens=tokens)

    def perplexity(self, tokens, window: int, stride: int | None = None, progress=None) -> dict:
        """Sliding-window perplexity of ``tokens``, the protocol of
        :func:`bitswitch.evaluate.perplexity.perplexity` (same windows, same scored tokens):
        ``{"ppl", "nll", "tokens"}``. ``progress`` (e.g. a ``tqdm``) is advanced as that one is."""
        from ..evaluate.perplexity import windows

        tokens = self._tokens(tokens, minimum=2)
        _positive_int("window", window, 2)
        self._fits(window - 1, "perplexity window")
        stride = stride or window
        if not 0 < stride <= window:
            raise BitswitchError(f"perplexity stride must be in 1..window ({window}), got {stride}")
        nll_sum, scored = 0.0, 0
        for begin, end, n_target in windows(len(tokens), window, stride):
            if end - begin >= 2:   # a one-token tail window predicts nothing
                lp = self.logprobs(tokens[begin:end])
                valid = min(n_target, len(lp))
                nll_sum -= sum(lp[len(lp) - valid:])
                scored += valid
            if progress is not None:
                progress.update(n_target)
        nll = nll_sum / max(scored, 1)
        return {"ppl": math.exp(nll), "nll": nll, "tokens": scored}

    def peak_rss_mb(self) -> float:
        """Peak resident set size of the node process so far, in MiB."""
        return self._call("stats")["max_rss_kib"] / 1024
