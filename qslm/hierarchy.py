"""The model → blocks → modules hierarchy that sensitivity and the tiered search work on.

A :class:`Hierarchy` lists, in model order, the *blocks* of a model and, in each block, its
*quantizable leaves* (``nn.Linear`` and ``nn.Embedding`` modules, by fully-qualified name) with
their weight shapes and parameter counts. Two kinds of block:

* **repeated** blocks — the elements of the model's stack of identical blocks
  (SpikeGPT: ``blocks.0 … blocks.{L-1}``, each with ``att.{key,value,receptance,output}`` and
  ``ffn.{key,receptance,value}``);
* **top-level** pseudo-blocks — every quantizable leaf outside the stack is a block of its own,
  named after the leaf (SpikeGPT: ``emb`` and ``head`` / ``classify_head``).

:func:`build_hierarchy` asks the model first: a model that has ``hierarchy()`` (the protocol of
``qslm.models``: an ordered mapping block name → leaf names) is taken at its word. Any other torch
model is discovered: the repeated blocks are the children of the ``nn.ModuleList`` /
``nn.Sequential`` whose children all have the same type and that holds the most quantizable weight
parameters (ties: more children, then the first in model order); every ``nn.Linear`` /
``nn.Embedding`` is a leaf — the same set :func:`qslm.quant.quantizable_modules` quantizes.

``hierarchy.format_tree()`` prints it::

    SpikeGPT: 46,656 parameters, 45,824 in 16 quantizable modules (832 elsewhere)
    ├── emb                                      9,600
    │   └── emb               Embedding 300×32   9,600
    ├── blocks.0  (repeated)                    13,312
    │   ├── att.key           Linear 32→32       1,024
    ...
    └── head                                     9,600
        └── head              Linear 32→300      9,600

Shapes follow the plan convention ``(N, K)``: a Linear weight is ``(out_features, in_features)``;
an Embedding weight ``(V, C)`` has ``out_features = V`` (one row per token) and
``in_features = C``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from qslm.errors import HierarchyError

__all__ = ["Block", "Hierarchy", "Leaf", "build_hierarchy", "discover_blocks"]

FORMAT_VERSION = 1  # of Hierarchy.to_dict()
LEAF_TYPES = (nn.Linear, nn.Embedding)
_KINDS = ("linear", "embedding")


@dataclass(frozen=True)
class Leaf:
    """One quantizable module: its name, kind and weight shape ``(out_features, in_features)``."""

    name: str  # fully-qualified module name (a QuantPlan key)
    kind: str  # "linear" | "embedding"
    out_features: int  # N: weight rows (an embedding's vocabulary size)
    in_features: int  # K: weight columns (an embedding's width)
    n_params: int  # parameters of the module itself: weight plus bias if any

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise HierarchyError(f"leaf {self.name!r}: kind must be one of {_KINDS}, "
                                 f"got {self.kind!r}")

    @property
    def weight_params(self) -> int:
        """Elements of the weight matrix, ``N·K`` (what quantization compresses)."""
        return self.out_features * self.in_features

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "out_features": self.out_features,
                "in_features": self.in_features, "n_params": self.n_params}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Leaf:
        try:
            return cls(str(d["name"]), str(d["kind"]), int(d["out_features"]),
                       int(d["in_features"]), int(d["n_params"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise HierarchyError(f"bad leaf entry {d!r}: {exc}") from None

    def describe(self) -> str:
        """``Linear 32→128`` or ``Embedding 300×32``."""
        if self.kind == "embedding":
            return f"Embedding {self.out_features}×{self.in_features}"
        return f"Linear {self.in_features}→{self.out_features}"


@dataclass(frozen=True)
class Block:
    """A block: a repeated element of the model's stack, or a top-level pseudo-block."""

    name: str
    leaves: tuple[Leaf, ...]  # in model order
    repeated: bool  # True: an element of the repeated stack; False: a top-level pseudo-block

    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(leaf.name for leaf in self.leaves)

    @property
    def n_params(self) -> int:
        """Parameters of the block's quantizable leaves (weights and biases)."""
        return sum(leaf.n_params for leaf in self.leaves)

    @property
    def weight_params(self) -> int:
        return sum(leaf.weight_params for leaf in self.leaves)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "repeated": self.repeated,
                "leaves": [leaf.to_dict() for leaf in self.leaves]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Block:
        try:
            return cls(str(d["name"]), tuple(Leaf.from_dict(x) for x in d["leaves"]),
                       bool(d["repeated"]))
        except (KeyError, TypeError) as exc:
            raise HierarchyError(f"bad block entry: {exc}") from None


@dataclass(frozen=True)
class Hierarchy:
    """Ordered blocks → quantizable leaves of one model (see the module docstring).

    Immutable and hashable (tuples only), so it can be shipped to workers and used as a key.
    """

    model_name: str  # the model's class name, for display
    blocks: tuple[Block, ...]  # in model order
    total_params: int  # every parameter of the model (shared ones once), quantizable or not
    source: str = "protocol"  # "protocol" (model.hierarchy()) or "discovered"

    def __post_init__(self) -> None:
        seen_blocks: set[str] = set()
        seen_leaves: dict[str, str] = {}
        for block in self.blocks:
            if block.name in seen_blocks:
                raise HierarchyError(f"block {block.name!r} appears twice")
            seen_blocks.add(block.name)
            if not block.leaves:
                raise HierarchyError(f"block {block.name!r} has no quantizable leaf")
            for leaf in block.leaves:
                if leaf.name in seen_leaves:
                    raise HierarchyError(f"module {leaf.name!r} is in two blocks: "
                                         f"{seen_leaves[leaf.name]!r} and {block.name!r}")
                seen_leaves[leaf.name] = block.name
        object.__setattr__(self, "_block_of", seen_leaves)
        object.__setattr__(self, "_by_name", {b.name: b for b in self.blocks})

    # ---- lookup --------------------------------------------------------------------------------
    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    @property
    def module_names(self) -> tuple[str, ...]:
        """Every quantizable leaf, in model order."""
        return tuple(leaf.name for b in self.blocks for leaf in b.leaves)

    @property
    def leaves(self) -> dict[str, Leaf]:
        """Leaf name → :class:`Leaf`, in model order."""
        return {leaf.name: leaf for b in self.blocks for leaf in b.leaves}

    @property
    def repeated_blocks(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.repeated)

    def block(self, name: str) -> Block:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise HierarchyError(f"no block {name!r}; blocks: "
                                 f"{', '.join(self.block_names)}") from None

    def block_of(self, module: str) -> str:
        """Name of the block that holds ``module``."""
        try:
            return self._block_of[module]  # type: ignore[attr-defined]
        except KeyError:
            raise HierarchyError(f"{module!r} is not a quantizable module of this hierarchy") \
                from None

    def as_mapping(self) -> dict[str, list[str]]:
        """Block name → leaf names: the form of the ``model.hierarchy()`` protocol."""
        return {b.name: list(b.module_names) for b in self.blocks}

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    # ---- counts --------------------------------------------------------------------------------
    @property
    def quantizable_params(self) -> int:
        """Parameters of all quantizable leaves (weights and biases)."""
        return sum(b.n_params for b in self.blocks)

    @property
    def weight_params(self) -> int:
        return sum(b.weight_params for b in self.blocks)

    # ---- display and (de)serialization ---------------------------------------------------------
    def format_tree(self) -> str:
        """A printable tree: blocks with their parameter totals, leaves with shape and count.

        Counts are of the leaves' weights and biases; the header adds the model's other
        parameters (LayerNorms, biases of nothing quantizable, time constants)."""
        n_leaves = sum(len(b.leaves) for b in self.blocks)
        other = self.total_params - self.quantizable_params
        lines = [f"{self.model_name}: {self.total_params:,} parameters, "
                 f"{self.quantizable_params:,} in {n_leaves} quantizable modules "
                 f"({max(other, 0):,} elsewhere)"]
        rows: list[tuple[str, str, str]] = []  # (tree text, description, count)
        for i, block in enumerate(self.blocks):
            last_block = i == len(self.blocks) - 1
            tag = "  (repeated)" if block.repeated else ""
            rows.append((("└── " if last_block else "├── ") + block.name + tag, "",
                         f"{block.n_params:,}"))
            pad = "    " if last_block else "│   "
            for j, leaf in enumerate(block.leaves):
                short = leaf.name[len(block.name) + 1:] \
                    if leaf.name.startswith(block.name + ".") else leaf.name
                branch = "└── " if j == len(block.leaves) - 1 else "├── "
                rows.append((pad + branch + short, leaf.describe(), f"{leaf.n_params:,}"))
        w0 = max(len(r[0]) for r in rows) + 2
        w1 = max(len(r[1]) for r in rows) + 2
        w2 = max(len(r[2]) for r in rows)
        lines += [f"{t:<{w0}}{d:<{w1}}{c:>{w2}}".rstrip() for t, d, c in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_tree()

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model_name": self.model_name,
                "total_params": self.total_params, "source": self.source,
                "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hierarchy:
        if not isinstance(d, Mapping) or d.get("format_version") != FORMAT_VERSION:
            got = d.get("format_version") if isinstance(d, Mapping) else type(d).__name__
            raise HierarchyError(f"hierarchy format_version must be {FORMAT_VERSION}, got {got!r}")
        try:
            return cls(str(d["model_name"]), tuple(Block.from_dict(b) for b in d["blocks"]),
                       int(d["total_params"]), str(d.get("source", "protocol")))
        except (KeyError, TypeError) as exc:
            raise HierarchyError(f"bad hierarchy: {exc}") from None


# ================================================================================================
# Building
# ================================================================================================


def _leaf(name: str, module: nn.Module) -> Leaf:
    if not isinstance(module, LEAF_TYPES):
        raise HierarchyError(f"quantizable module {name!r} is a {type(module).__name__}; only "
                             "nn.Linear and nn.Embedding weights can be quantized")
    w = module.weight
    if w.ndim != 2:
        raise HierarchyError(f"module {name!r} has a weight of shape {tuple(w.shape)}, "
                             "expected 2-D")
    n_params = sum(p.numel() for p in module.parameters(recurse=False))
    kind = "embedding" if isinstance(module, nn.Embedding) else "linear"
    return Leaf(name, kind, int(w.shape[0]), int(w.shape[1]), int(n_params))


def _total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared parameters once


def _parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _from_protocol(model: nn.Module, mapping: Any) -> Hierarchy:
    if not isinstance(mapping, Mapping):
        raise HierarchyError(f"{type(model).__name__}.hierarchy() must return a mapping block "
                             f"name → leaf names, got {type(mapping).__name__}")
    modules = dict(model.named_modules())
    blocks = []
    for bname, names in mapping.items():
        if not isinstance(bname, str) or isinstance(names, str) or not isinstance(names, Sequence):
            raise HierarchyError(f"hierarchy entry {bname!r}: expected a block name and a list "
                                 f"of module names, got {names!r}")
        leaves = []
        for name in names:
            if name not in modules:
                raise HierarchyError(f"hierarchy block {bname!r} names module {name!r}, which "
                                     "the model does not have")
            leaves.append(_leaf(name, modules[name]))
        # Repeated: the block is itself a module, an element of a ModuleList / Sequential.
        parent = modules.get(_parent_name(bname)) if bname in modules and bname else None
        repeated = isinstance(parent, (nn.ModuleList, nn.Sequential))
        blocks.append(Block(bname, tuple(leaves), repeated))
    return Hierarchy(type(model).__name__, tuple(blocks), _total_params(model), "protocol")


def discover_blocks(model: nn.Module) -> str | None:
    """Name of the container whose children are the repeated blocks, or None.

    Candidates: every ``nn.ModuleList`` / ``nn.Sequential`` (the model itself included) with at
    least two children, all of one type, that hold quantizable leaves. The winner holds the most
    quantizable weight parameters; ties go to more children, then to the first in model order
    (the outermost)."""
    best: tuple[int, int, int] | None = None
    best_name: str | None = None
    for order, (name, mod) in enumerate(model.named_modules()):
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(mod.children())
        if len(children) < 2 or len({type(c) for c in children}) != 1:
            continue
        weight = sum(m.weight.numel() for c in children for m in c.modules()
                     if isinstance(m, LEAF_TYPES))
        if weight == 0:
            continue
        key = (weight, len(children), -order)
        if best is None or key > best:
            best, best_name = key, name
    return best_name


def _discover(model: nn.Module) -> Hierarchy:
    stack = discover_blocks(model)
    prefix = "" if stack in (None, "") else stack + "."
    block_names: set[str] = set()
    if stack is not None:
        block_names = {prefix + n for n, _ in model.get_submodule(stack).named_children()}
    blocks: dict[str, list[Leaf]] = {}
    repeated: dict[str, bool] = {}
    for name, mod in model.named_modules():  # model order; a shared module appears once
        if not isinstance(mod, LEAF_TYPES) or not name:
            continue
        owner = next((b for b in block_names if name == b or name.startswith(b + ".")), None)
        bname = owner if owner is not None else name
        blocks.setdefault(bname, []).append(_leaf(name, mod))
        repeated[bname] = owner is not None
    if not blocks:
        raise HierarchyError(f"{type(model).__name__} has no nn.Linear or nn.Embedding module: "
                             "nothing to quantize")
    return Hierarchy(type(model).__name__,
                     tuple(Block(b, tuple(ls), repeated[b]) for b, ls in blocks.items()),
                     _total_params(model), "discovered")


def build_hierarchy(model: nn.Module) -> Hierarchy:
    """The :class:`Hierarchy` of ``model``: from ``model.hierarchy()`` when the model has one
    (the qslm model protocol), else discovered (see :func:`discover_blocks`).

    Raises :class:`~qslm.errors.HierarchyError` for a protocol that names a missing or
    non-quantizable module, a module in two blocks, or a model without any quantizable module.
    """
    if not isinstance(model, nn.Module):
        raise HierarchyError(f"build_hierarchy needs a torch nn.Module, got "
                             f"{type(model).__name__}")
    if callable(getattr(model, "hierarchy", None)):
        return _from_protocol(model, model.hierarchy())
    return _discover(model)
