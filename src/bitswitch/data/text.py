"""Plain-text corpora (WikiText) for perplexity and language-model fine-tuning.

A source is a local text file (lines joined with newlines, as the raw WikiText files are), or a
hub name: ``wikitext`` (= ``wikitext-2-raw-v1``), ``wikitext-103`` (= ``wikitext-103-raw-v1``),
joined with blank lines as in the transformers perplexity guide.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BitswitchError

HUB = {"wikitext": ("wikitext", "wikitext-2-raw-v1"), "wikitext-2": ("wikitext", "wikitext-2-raw-v1"),
       "wikitext-103": ("wikitext", "wikitext-103-raw-v1")}


def load_text(source: str, split: str = "test") -> str:
    path = Path(source).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BitswitchError(f"text file {source!r} is not UTF-8 ({exc.reason}): pass a UTF-8 text file") from exc
        if not text.strip():
            raise BitswitchError(f"text file {source!r} is empty: pass a file with text in it")
        return text
    if source in HUB:
        name, config = HUB[source]
        from ..hub import hub_reachable

        hub_reachable()  # offline: read the datasets cache only, fail fast
        try:
            from datasets import load_dataset

            ds = load_dataset(name, config, split=split)
        except Exception as exc:  # noqa: BLE001 - no hub, nothing cached, bad split...
            raise BitswitchError(f"cannot load {source!r} from the hub ({type(exc).__name__}): pass a local "
                                 "text file such as ../shared/data/wikitext-2-raw/wiki.test.raw") from exc
        return "\n\n".join(ds["text"])
    raise BitswitchError(f"text data {source!r} is neither a file nor a known hub name: pass a text file or "
                         f"one of {', '.join(HUB)}")


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None, offset: int = 0):
    """Token ids (1, N) of ``text``: tokens ``offset .. offset + max_tokens`` (a held-out slice).

    Only as much text as the budget needs is tokenized (a generous character prefix first, the
    whole text if that falls short), so a short evaluation of a long corpus stays fast.
    """
    if offset < 0:
        raise BitswitchError(f"--offset must be >= 0 tokens, got {offset}")
    end = None if max_tokens is None else offset + max_tokens
    ids = None
    if end is not None:
        prefix = text[: end * 12]  # > 12 characters per token is rare in any tokenizer
        ids = tokenizer(prefix, return_tensors="pt").input_ids
        if ids.shape[1] < end and len(prefix) < len(text):
            ids = None
    if ids is None:
        ids = tokenizer(text, return_tensors="pt").input_ids
    return ids[:, offset:end]
