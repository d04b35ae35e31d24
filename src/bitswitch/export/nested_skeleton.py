"""A hollow stand-in for the transformers model of a nested checkpoint, for the runtime to pack from.

The runtime packs a nested checkpoint straight from its int8 masters and never runs the Hugging Face
model; it only needs that model's module names (to find the units), its float tensors (embeddings,
norms, biases) and its config. Building the real model class, even on empty weights, imports
transformers' modeling stack (torch._dynamo, generation utilities: about 70-130 MiB resident on a
CPU process) for nothing. The skeleton is plain ``nn.Module`` containers named as the checkpoint's
tensors name them:

* every master module is an ``nn.Linear`` whose weight is a zero-stride placeholder of its (out, in)
  shape (no memory; never run it), with its stored bias; GPT-2's ``Conv1D`` units become such
  ``nn.Linear`` too (the masters are stored (out, in), and nothing reads the skeleton's layout);
* every other stored tensor is a parameter of a container at its name (``model.norm.weight``);
* numbered children (``model.layers.0``) form an ``nn.ModuleList``;
* ties are applied as stored (an fp head tied to the embedding is the embedding parameter).

``bitswitch.export.nested_reader.load_nested_model(..., hollow=True)`` returns it made switchable,
adapters loaded: packing it gives the runtime of the fully loaded model bit for bit (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import BitswitchError
from .nested_format import FIX, INFO_FILE


EMBEDDINGS = ("model.embed_tokens", "transformer.wte", "transformer.wpe")


class _Node(nn.Module):
    """A named container of the skeleton (a block, ``self_attn``, a norm holding its weight)."""


def _tree(names) -> dict:
    tree: dict = {}
    for name in names:
        node = tree
        for part in name.split("."):
            node = node.setdefault(part, {})
    return tree


def _build(tree: dict, leaves: dict[str, nn.Module], prefix: str = "") -> nn.Module:
    """Modules for ``tree`` (dotted paths as nested dicts): a leaf module where one is given,
    ModuleList where every child is a number, else a container."""
    if prefix in leaves:
        return leaves[prefix]
    kids = {k: _build(v, leaves, f"{prefix}.{k}" if prefix else k) for k, v in tree.items()}
    if kids and all(k.isdigit() for k in kids):
        order = sorted(kids, key=int)
        if order != [str(i) for i in range(len(order))]:
            raise BitswitchError(f"the checkpoint's tensors number {prefix!r} {order[0]}..{order[-1]} with gaps: {FIX}")
        return nn.ModuleList(kids[k] for k in order)
    node = _Node()
    for k, m in kids.items():
        node.add_module(k, m)
    return node


def _hollow_linear(codes_shape, bias: Tensor | None) -> nn.Linear:
    out_f, in_f = codes_shape
    lin = nn.Linear(in_f, out_f, bias=False, device="meta")
    lin.weight = nn.Parameter(torch.zeros((), dtype=torch.float32).expand(out_f, in_f), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=False)
    return lin


def skeleton(ckpt) -> nn.Module:
    """The hollow model of :class:`~bitswitch.export.nested_reader.NestedCheckpoint` ``ckpt``
    (``config`` attached), on the CPU in eval mode; a one-line error where its tensors do not form
    the model its config describes."""
    leaves: dict[str, nn.Module] = {m: _hollow_linear(tuple(codes.shape), ckpt.biases.get(m))
                                    for m, (codes, _, _) in ckpt.masters.items()}
    params: dict[str, tuple[str, str]] = {}
    for name in ckpt.params:
        owner, _, leaf = name.rpartition(".")
        if owner in leaves:
            raise BitswitchError(f"{INFO_FILE} of {ckpt.path} stores {name!r} beside the master {owner!r}: {FIX}")
        params[name] = (owner, leaf)
    for name, (owner, leaf) in params.items():
        # a float matrix that is not an embedding is a linear module kept in float (an fp LM head):
        # a Linear, whose weight (and bias) the stored tensors then replace
        if leaf == "weight" and ckpt.params[name].dim() == 2 and owner not in EMBEDDINGS:
            leaves[owner] = _hollow_linear(tuple(ckpt.params[name].shape), None)
    tie_modules = {t.rpartition(".")[0] for t in ckpt.ties}
    names = [*leaves, *(o for o, _ in params.values()), *tie_modules]
    for name in names:
        if not name:
            raise BitswitchError(f"{INFO_FILE} of {ckpt.path} stores a tensor outside any module: {FIX}")
    # a tied module that holds nothing else (an fp LM head tied to the embedding) is a Linear of the
    # source's shape, which receives the source parameter below
    for target, source in ckpt.ties.items():
        owner = target.rpartition(".")[0]
        if owner not in leaves:
            src = ckpt.params.get(source)
            if src is None or src.dim() != 2:
                raise BitswitchError(f"{INFO_FILE} of {ckpt.path} ties {target!r} to {source!r}, not a stored "
                                     f"matrix: {FIX}")
            leaves[owner] = _hollow_linear(tuple(src.shape), None)
    root = _build(_tree(names), leaves)
    for name, (owner, leaf) in params.items():
        root.get_submodule(owner).register_parameter(leaf, nn.Parameter(ckpt.params[name], requires_grad=False))
    for target, source in ckpt.ties.items():
        owner, _, leaf = target.rpartition(".")
        setattr(root.get_submodule(owner), leaf, root.get_parameter(source))
    root.config = ckpt.config
    _check(root, ckpt)
    return root.eval()


def _check(root: nn.Module, ckpt) -> None:
    """The skeleton is the config's model: its block count, and embeddings of (vocab, hidden)."""
    from ..units import block_list

    cfg = ckpt.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    found = None
    try:
        found = block_list(root)
    except BitswitchError:
        pass
    if found is None:
        raise BitswitchError(f"the tensors of nested checkpoint {str(ckpt.path)!r} do not form GPT-2 or Llama-style "
                             f"blocks with every unit's master: {FIX}")
    prefix, blocks, _ = found
    embed_name = "transformer.wte.weight" if prefix == "transformer.h" else "model.embed_tokens.weight"
    embed = ckpt.params.get(embed_name)
    want = (getattr(cfg, "vocab_size", None), hidden)
    if len(blocks) != layers or embed is None or tuple(embed.shape) != want:
        got = None if embed is None else tuple(embed.shape)
        raise BitswitchError(f"nested checkpoint {str(ckpt.path)!r} holds {len(blocks)} blocks and embeddings "
                             f"{got} where its config.json says {layers} and {want}: {FIX}")
