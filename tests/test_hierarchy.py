"""qslm.hierarchy: SpikeGPT through its hierarchy() protocol, generic torch models by discovery
of their repeated blocks, the printed tree, and the errors."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from qslm.errors import HierarchyError, QslmError
from qslm.hierarchy import Block, Hierarchy, Leaf, build_hierarchy, discover_blocks
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import quantizable_modules

ATT = ("att.key", "att.value", "att.receptance", "att.output")
FFN = ("ffn.key", "ffn.receptance", "ffn.value")


# --- models -------------------------------------------------------------------------------------


def tiny_spikegpt(num_classes: int = 0) -> SpikeGPT:
    torch.manual_seed(0)
    return SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=2, n_embd=32, num_classes=num_classes))


class ToyBlock(nn.Module):
    """A transformer-like block: two attention heads in a ModuleList, an MLP in a Sequential."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, d // 2) for _ in range(2))  # a smaller stack
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        x = x + self.proj(torch.cat([head(h) for head in self.heads], dim=-1))
        return x + self.mlp(x)


class ToyLM(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, n_layer: int = 3) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(8, d)
        self.layers = nn.ModuleList(ToyBlock(d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_f(x))


# --- SpikeGPT (protocol) ------------------------------------------------------------------------


def test_spikegpt_hierarchy_follows_the_protocol():
    model = tiny_spikegpt()
    h = build_hierarchy(model)
    assert h.source == "protocol"
    assert h.block_names == ("emb", "blocks.0", "blocks.1", "head")
    assert [b.repeated for b in h.blocks] == [False, True, True, False]
    assert h.block("blocks.1").module_names == tuple(f"blocks.1.{s}" for s in ATT + FFN)
    assert h.as_mapping() == model.hierarchy()
    assert h.module_names == tuple(quantizable_modules(model))  # what apply_fake_quant quantizes
    leaves = h.leaves
    assert (leaves["emb"].kind, leaves["emb"].out_features, leaves["emb"].in_features) == \
        ("embedding", 300, 32)
    assert (leaves["blocks.0.ffn.key"].in_features, leaves["blocks.0.ffn.key"].out_features) == \
        (32, 128)
    assert (leaves["blocks.0.ffn.value"].in_features, leaves["blocks.0.ffn.value"].out_features) \
        == (128, 32)
    assert leaves["head"].n_params == leaves["head"].weight_params == 300 * 32
    assert h.block("blocks.0").n_params == 4 * 32 * 32 + 2 * 32 * 128 + 32 * 32
    assert h.total_params == model.config.n_params()
    assert h.total_params == sum(p.numel() for p in model.parameters())
    assert h.block_of("blocks.1.att.output") == "blocks.1"
    assert h.block_of("emb") == "emb"


def test_spikegpt_classifier_has_classify_head_with_bias():
    model = tiny_spikegpt(num_classes=2)
    h = build_hierarchy(model)
    assert h.block_names[-1] == "classify_head"
    leaf = h.leaves["classify_head"]
    assert (leaf.out_features, leaf.in_features, leaf.n_params) == (2, 32, 2 * 32 + 2)
    assert h.total_params == model.config.n_params()


def test_format_tree_shows_blocks_leaves_and_counts():
    text = build_hierarchy(tiny_spikegpt()).format_tree()
    lines = text.splitlines()
    assert lines[0] == ("SpikeGPT: 46,656 parameters, 45,824 in 16 quantizable modules "
                        "(832 elsewhere)")
    assert len(lines) == 1 + 4 + 16  # header, blocks, leaves
    assert lines[1].startswith("├── emb") and lines[1].endswith("9,600")
    assert lines[3].startswith("├── blocks.0  (repeated)") and lines[3].endswith("13,312")
    assert "│   ├── ffn.key" in text and "Linear 32→128" in text
    assert lines[-2].startswith("└── head") and lines[-1].startswith("    └── head")
    assert "Embedding 300×32" in lines[2]
    assert str(build_hierarchy(tiny_spikegpt())) == text


# --- generic models (discovery) -----------------------------------------------------------------


def test_toy_transformer_blocks_are_discovered():
    model = ToyLM()
    assert discover_blocks(model) == "layers"  # not the per-block heads, nor the MLP Sequential
    h = build_hierarchy(model)
    assert h.source == "discovered"
    assert h.block_names == ("tok_emb", "pos_emb", "layers.0", "layers.1", "layers.2", "lm_head")
    assert [b.repeated for b in h.blocks] == [False, False, True, True, True, False]
    assert h.block("layers.2").module_names == (
        "layers.2.heads.0", "layers.2.heads.1", "layers.2.proj", "layers.2.mlp.0",
        "layers.2.mlp.2")
    assert set(h.module_names) == set(quantizable_modules(model))
    assert h.leaves["layers.0.mlp.0"].n_params == 16 * 64 + 64  # weight and bias
    assert h.leaves["lm_head"].n_params == 16 * 50
    ln_params = 3 * 2 * 16 + 2 * 16
    assert h.total_params == h.quantizable_params + ln_params
    tree = h.format_tree()
    assert "├── layers.1  (repeated)" in tree and "│   ├── heads.0" in tree
    model(torch.randint(0, 50, (2, 8)))  # a working model


def test_sequential_root_and_models_without_a_stack():
    stack = nn.Sequential(ToyBlock(8), ToyBlock(8))
    h = build_hierarchy(stack)
    assert h.block_names == ("0", "1") and all(b.repeated for b in h.blocks)
    assert h.block("1").module_names[0] == "1.heads.0"

    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # mixed types: no stack
    h = build_hierarchy(mlp)
    assert discover_blocks(mlp) is None
    assert h.block_names == ("0", "2") and not any(b.repeated for b in h.blocks)


def test_discovery_prefers_the_stack_with_most_weights():
    class TwoStacks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.ModuleList(nn.Linear(4, 4) for _ in range(5))
            self.big = nn.ModuleList(ToyBlock(16) for _ in range(2))

    h = build_hierarchy(TwoStacks())
    assert discover_blocks(TwoStacks()) == "big"
    assert h.block_names[:5] == tuple(f"small.{i}" for i in range(5))
    assert not any(h.block(f"small.{i}").repeated for i in range(5))
    assert h.block("big.0").repeated


def test_shared_module_is_listed_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert build_hierarchy(model).module_names == ("0",)


# --- errors -------------------------------------------------------------------------------------


class Protocol(nn.Module):
    def __init__(self, mapping: object) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.ln = nn.LayerNorm(2)
        self.mapping = mapping

    def hierarchy(self) -> object:
        return self.mapping


@pytest.mark.parametrize("mapping, match", [
    pytest.param({"x": ["nope"]}, "does not have", id="missing-module"),
    pytest.param({"x": ["ln"]}, "LayerNorm", id="not-quantizable"),
    pytest.param({"x": ["a"], "y": ["a"]}, "two blocks", id="module-in-two-blocks"),
    pytest.param({"x": []}, "no quantizable leaf", id="empty-block"),
    pytest.param({"x": "a"}, "list of module names", id="names-not-a-list"),
    pytest.param([("x", ["a"])], "mapping", id="not-a-mapping"),
])
def test_bad_protocol_is_rejected(mapping, match):
    with pytest.raises(HierarchyError, match=match):
        build_hierarchy(Protocol(mapping))


def test_bad_models_are_rejected():
    with pytest.raises(HierarchyError, match="nothing to quantize"):
        build_hierarchy(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    with pytest.raises(HierarchyError, match="nn.Module"):
        build_hierarchy(lambda x: x)
    h = build_hierarchy(tiny_spikegpt())
    with pytest.raises(HierarchyError, match="no block 'blocks.9'"):
        h.block("blocks.9")
    with pytest.raises(HierarchyError, match="not a quantizable module"):
        h.block_of("ln_out")
    assert issubclass(HierarchyError, QslmError)


# --- value semantics ----------------------------------------------------------------------------


def test_round_trip_pickle_and_hash():
    h = build_hierarchy(tiny_spikegpt())
    assert Hierarchy.from_dict(h.to_dict()) == h
    assert pickle.loads(pickle.dumps(h)) == h
    assert hash(h) == hash(build_hierarchy(tiny_spikegpt()))
    assert "blocks.0" in h and "blocks.0.att.key" not in h and len(h) == 4
    assert [b.name for b in h] == list(h.block_names)
    with pytest.raises(HierarchyError, match="format_version"):
        Hierarchy.from_dict({**h.to_dict(), "format_version": 99})
    with pytest.raises(HierarchyError, match="kind"):
        Leaf("x", "conv", 1, 1, 1)
    with pytest.raises(HierarchyError, match="appears twice"):
        Hierarchy("m", (Block("b", (Leaf("x", "linear", 1, 1, 1),), False),
                        Block("b", (Leaf("y", "linear", 1, 1, 1),), False)), 2)
