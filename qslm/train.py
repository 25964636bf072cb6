"""`python -m qslm.train`: train the bundled models, resumably, from a recipe.

    python -m qslm.train run spikegpt-mini-wt2      # LM on WikiText-2 train (resumes if stopped)
    python -m qslm.train run spikegpt-mini-sst2     # SST-2 classifier fine-tuned from the LM
    python -m qslm.train run sdt-mini-sst2          # spike-driven encoder classifier on SST-2
    python -m qslm.train export spikegpt-mini-wt2   # evaluate, bundle into qslm/zoo, model card

Recipes (every hyper-parameter and the seed) live in ``qslm/zoo/recipes.toml``. A run writes to
``runs/NAME/``: ``ckpt.pt`` (model, optimizer, step, every random state; written atomically
every ``ckpt_every`` steps, so a killed run resumes where it stopped and continues bit for bit),
``metrics.jsonl`` (one line per log/eval step), ``tokenizer.json`` and the token cache.
AdamW (β = 0.9/0.99, weight decay on matrices only), linear warm-up then cosine decay, gradient
clipping, a fixed seed for initialisation and batch sampling.

Two model families (recipe key ``family``): ``spikegpt`` (the default) and ``sdt``, the
spike-driven encoder classifier (``qslm.models.sdt``), trained from scratch on SST-2 with the
tokenizer of an LM recipe (``init``) and, with ``emb_init = "pca"``, its embedding projected on
its ``n_embd`` principal directions; ``zero_init_residual`` starts its residual branches at 0.
The encoder is trained with its BatchNorms and bundled with them folded into its Linears
(``qslm.zoo.export``). SST-2 recipes may also set ``label_smoothing``,
``token_dropout`` (word dropout: each training token is removed with this probability) and
``bucket_batches`` (batches of similar length, less padding); at their defaults the batches and
the loss are those of the SpikeGPT recipes. Every batch is a pure function of (seed, step), so a
resumed run continues bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qslm._io import atomic_path
from qslm.errors import QslmError

RECIPES_FILE = Path(__file__).resolve().parent / "zoo" / "recipes.toml"
TASKS = ("lm", "sst2")
FAMILIES = ("spikegpt", "sdt")
EMB_INITS = ("", "pca")
LOG_EVERY = 25


@dataclass(frozen=True)
class Recipe:
    """One training recipe (see recipes.toml for the meaning of each field)."""

    name: str
    task: str
    seed: int
    ctx_len: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    weight_decay: float
    grad_clip: float
    dropout: float
    eval_every: int
    eval_tokens: int
    ckpt_every: int
    vocab_size: int = 0  # lm: BPE vocabulary; sst2: taken from the initial LM's tokenizer
    n_layer: int = 0  # lm and sdt; a spikegpt sst2 recipe takes the LM's shape
    n_embd: int = 0
    init: str = ""  # sst2: the LM recipe (its run directory or bundled weights) to start from
    #                 (sdt: its tokenizer, and its embedding with emb_init = "pca")
    # Added with the sdt family; Recipe.to_dict() of a SpikeGPT recipe leaves them out while at
    # their defaults, so the recipes (run checkpoints, model cards) of those models are unchanged.
    family: str = "spikegpt"  # "spikegpt" or "sdt" (the spike-driven encoder classifier)
    mlp_ratio: int = 0  # sdt: MLP hidden width / n_embd
    t_sim: int = 0  # sdt: simulation steps each input is presented for
    emb_init: str = ""  # sdt: "" random N(0, 1); "pca": the init LM's embedding, PCA to n_embd
    zero_init_residual: bool = False  # sdt: residual branches start at 0 (γ of o_norm, fc2_norm)
    label_smoothing: float = 0.0  # sst2: label smoothing of the cross-entropy
    token_dropout: float = 0.0  # sst2: probability that a training token is removed
    bucket_batches: int = 0  # sst2: sort each chunk of this many batches by length (0: off)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise QslmError(f"recipe {self.name}: task must be one of {TASKS}, got {self.task!r}")
        if self.family not in FAMILIES:
            raise QslmError(f"recipe {self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.family == "sdt":
            self._check_sdt()
        for f in ("ctx_len", "batch_size", "max_steps", "eval_every", "ckpt_every"):
            if getattr(self, f) < 1:
                raise QslmError(f"recipe {self.name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.task == "lm" and min(self.vocab_size, self.n_layer, self.n_embd) < 1:
            raise QslmError(f"recipe {self.name}: an lm recipe needs vocab_size, n_layer and n_embd")
        if self.task == "sst2" and not self.init:
            raise QslmError(f"recipe {self.name}: an sst2 recipe needs init = <lm recipe>")
        if not 0 < self.min_lr <= self.lr:
            raise QslmError(f"recipe {self.name}: need 0 < min_lr <= lr")
        for f in ("label_smoothing", "token_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise QslmError(f"recipe {self.name}: {f} must be in [0, 1), got {getattr(self, f)}")
        if self.bucket_batches < 0:
            raise QslmError(f"recipe {self.name}: bucket_batches must be >= 0, got {self.bucket_batches}")
        if self.task == "lm" and (self.label_smoothing or self.token_dropout or self.bucket_batches):
            raise QslmError(f"recipe {self.name}: label_smoothing, token_dropout and bucket_batches "
                            "are for sst2 recipes")
        if self.family != "sdt" and (self.mlp_ratio or self.t_sim or self.emb_init
                                     or self.zero_init_residual):
            raise QslmError(f"recipe {self.name}: mlp_ratio, t_sim, emb_init and zero_init_residual "
                            "are for family = \"sdt\" recipes")

    def _check_sdt(self) -> None:
        where = f"recipe {self.name} (family sdt)"
        if self.task != "sst2":
            raise QslmError(f"{where}: the spike-driven encoder is a classifier: task must be "
                            f"\"sst2\", got {self.task!r}")
        for f in ("n_layer", "n_embd", "mlp_ratio", "t_sim"):
            if getattr(self, f) < 1:
                raise QslmError(f"{where}: needs {f} >= 1, got {getattr(self, f)}")
        if self.vocab_size:
            raise QslmError(f"{where}: vocab_size comes from the tokenizer of init; leave it out")
        if self.dropout:
            raise QslmError(f"{where}: the spike-driven encoder has no dropout layer: set dropout "
                            "= 0 (regularize with token_dropout / label_smoothing)")
        if self.emb_init not in EMB_INITS:
            raise QslmError(f"{where}: emb_init must be one of {EMB_INITS}, got {self.emb_init!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every field; for a SpikeGPT recipe, the fields added with the sdt family only when
        set (so the SpikeGPT recipes keep the dict of their checkpoints and model cards)."""
        d = dataclasses.asdict(self)
        if self.family == "spikegpt":
            for f in _LATER_FIELDS:
                if d[f.name] == f.default:
                    del d[f.name]
        return d


# Recipe fields added after the SpikeGPT models were bundled (left out of to_dict at default).
_LATER_FIELDS = tuple(f for f in dataclasses.fields(Recipe) if f.name in (
    "family", "mlp_ratio", "t_sim", "emb_init", "zero_init_residual", "label_smoothing",
    "token_dropout", "bucket_batches"))


def load_recipes(path: Path = RECIPES_FILE) -> dict[str, Recipe]:
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    known = {f.name for f in dataclasses.fields(Recipe)} - {"name"}
    required = {f.name for f in dataclasses.fields(Recipe)
                if f.default is dataclasses.MISSING} - {"name"}
    out = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise QslmError(f"recipe {name} in {path}: expected a [{name}] table, got a value")
        unknown = sorted(set(fields) - known)
        if unknown:
            raise QslmError(f"recipe {name} in {path}: unknown key(s) {', '.join(unknown)}")
        missing = sorted(required - set(fields))
        if missing:
            raise QslmError(f"recipe {name} in {path}: missing key(s) {', '.join(missing)}")
        for f in dataclasses.fields(Recipe):
            if f.name in fields and not _type_ok(fields[f.name], f.type):
                raise QslmError(f"recipe {name} in {path}: {f.name} must be of type {f.type}, "
                                f"got {fields[f.name]!r}")
        out[name] = Recipe(name=name, **fields)
    return out


def _type_ok(value: Any, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def get_recipe(name: str) -> Recipe:
    recipes = load_recipes()
    if name not in recipes:
        raise QslmError(f"unknown recipe {name!r}; recipes: {', '.join(recipes)}")
    return recipes[name]


def lr_at(step: int, r: Recipe) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = min(1.0, (step - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps))
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, r: Recipe) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.99), eps=1e-8)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- data --------------------------------------------------------------------------------------


def lm_tokens(run_dir: Path, r: Recipe, data_dir: str | None) -> tuple[Any, dict[str, np.ndarray]]:
    """The run's tokenizer (trained once on wiki.train.raw) and token ids of each split (cached)."""
    from qslm.data.datasets import load_wikitext2
    from qslm.data.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    tok_path = run_dir / "tokenizer.json"
    if tok_path.exists():
        tok = load_tokenizer(tok_path)
    else:
        train_text = load_wikitext2("train", data_dir)
        tok = train_bpe(train_text.splitlines(keepends=True), r.vocab_size)
        save_tokenizer(tok, tok_path)
    ids = {}
    for split in ("train", "valid", "test"):
        cache = run_dir / f"tokens-{split}.npy"
        if cache.exists():
            ids[split] = np.load(cache)
            continue
        text = load_wikitext2(split, data_dir)
        arr = np.asarray(tok.encode(text).ids, dtype=np.int32)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
        ids[split] = arr
    return tok, ids


def sst2_examples(tok: Any, data_dir: str | None) -> dict[str, list[tuple[list[int], int]]]:
    from qslm.data.datasets import load_sst2

    out = {}
    for split in ("train", "dev"):
        rows = load_sst2(split, data_dir)
        enc = tok.encode_batch([s for s, _ in rows])
        out[split] = [(e.ids if e.ids else [0], label) for e, (_, label) in zip(enc, rows)]
    return out


# ---- runs ---------------------------------------------------------------------------------------


class Run:
    """State of one training run: model, optimizer, step, random generators, log."""

    def __init__(self, recipe: Recipe, run_dir: Path, model: torch.nn.Module) -> None:
        self.recipe = recipe
        self.dir = run_dir
        self.model = model
        self.opt = make_optimizer(model, recipe)
        self.step = 0
        self.rng = np.random.default_rng(recipe.seed)
        self.wall_s = 0.0
        self.ckpt = run_dir / "ckpt.pt"
        self.metrics = run_dir / "metrics.jsonl"

    def save(self) -> None:
        atomic_torch_save(
            {
                "format_version": 1,
                "recipe": self.recipe.to_dict(),
                "model_config": self.model.config.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "step": self.step,
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "wall_s": self.wall_s,
            },
            self.ckpt,
        )

    def try_resume(self) -> bool:
        if not self.ckpt.exists():
            return False
        state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
        if state.get("recipe") != self.recipe.to_dict():
            raise QslmError(
                f"{self.ckpt} belongs to a run with another recipe; pass another --out, or --fresh "
                "to discard it"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.wall_s = float(state["wall_s"])
        return True


def build_lm(r: Recipe, vocab_size: int) -> torch.nn.Module:
    from qslm.models import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(r.seed)
    cfg = SpikeGPTConfig(vocab_size=vocab_size, n_layer=r.n_layer, n_embd=r.n_embd, ctx_len=r.ctx_len,
                         dropout=r.dropout)
    return SpikeGPT(cfg)


def lm_batch(run: Run, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    r = run.recipe
    starts = run.rng.integers(0, len(train) - r.ctx_len - 1, size=r.batch_size)
    win = np.stack([train[s : s + r.ctx_len + 1] for s in starts]).astype(np.int64)
    win = torch.from_numpy(win)
    return win[:, :-1], win[:, 1:]


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(n)


def _stream(first: int, count: int, n: int, seed: int) -> list[int]:
    """Example indices at positions first … first+count−1 of the stream of shuffled epochs."""
    idx = []
    for pos in range(first, first + count):
        epoch, i = divmod(pos, n)
        idx.append(int(_epoch_order(seed, epoch, n)[i]))
    return idx


def sst2_batch(step: int, train: list, r: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``step`` of shuffled epochs over the training examples: a pure function of the step
    and the seed (epoch e uses permutation ``default_rng((seed, e))``), so a resumed run sees the
    same batches as an uninterrupted one.

    ``r.bucket_batches = K > 0``: the stream is cut into chunks of K batches; each chunk is sorted
    by length (stable), cut into K batches, and those are taken in the order of permutation
    ``default_rng((seed, chunk, 1))`` — every example still once per epoch, much less padding.
    ``r.token_dropout = p > 0``: each token of a (truncated) sentence is removed with probability
    p (``default_rng((seed, step, 2))``), at least one token kept."""
    from qslm.eval import pad_batch

    n, B = len(train), r.batch_size
    if r.bucket_batches:
        K = r.bucket_batches
        chunk, j = divmod(step, K)
        pool = _stream(chunk * K * B, K * B, n, r.seed)
        lengths = np.array([min(len(train[i][0]), r.ctx_len) for i in pool])
        pool = [pool[i] for i in np.argsort(lengths, kind="stable")]
        k = int(np.random.default_rng((r.seed, chunk, 1)).permutation(K)[j])
        idx = pool[k * B : (k + 1) * B]
    else:
        idx = _stream(step * B, B, n, r.seed)
    batch = [train[i] for i in idx]
    seqs = [list(e[0][: r.ctx_len]) for e in batch]
    if r.token_dropout:
        rng = np.random.default_rng((r.seed, step, 2))
        for b, seq in enumerate(seqs):
            keep = rng.random(len(seq)) >= r.token_dropout
            if not keep.any():
                keep[int(rng.integers(len(seq)))] = True
            seqs[b] = [t for t, k in zip(seq, keep) if k]
    ids, mask = pad_batch(seqs, max_len=r.ctx_len)
    return ids, mask, torch.tensor([e[1] for e in batch])


@torch.no_grad()
def lm_val_loss(model: torch.nn.Module, ids: np.ndarray, r: Recipe) -> float:
    n = min(len(ids), r.eval_tokens + 1)
    t = torch.from_numpy(ids[:n].astype(np.int64))
    model.eval()
    total, count = 0.0, 0
    windows = [t[i : i + r.ctx_len + 1] for i in range(0, n - 1, r.ctx_len)]
    windows = [w for w in windows if len(w) == r.ctx_len + 1]
    for b in range(0, len(windows), r.batch_size):
        w = torch.stack(windows[b : b + r.batch_size])
        _, loss = model(w[:, :-1], w[:, 1:])
        total += float(loss) * w[:, 1:].numel()
        count += w[:, 1:].numel()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def sst2_accuracy(model: torch.nn.Module, examples: list, r: Recipe) -> float:
    from qslm.eval import classification_accuracy, classification_batches

    res = classification_accuracy(
        model, classification_batches(examples, 128, max_len=r.ctx_len), progress=False
    )
    model.train()
    return float(res["accuracy"])


def train(r: Recipe, run_dir: Path, data_dir: str | None, fresh: bool, max_steps: int | None,
          progress: bool = True) -> Path:
    """Train (or resume) recipe ``r`` in ``run_dir`` up to ``max_steps`` (default: the recipe's)."""
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for p in run_dir.glob("ckpt.pt*"):
            p.unlink()
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    stop = min(max_steps or r.max_steps, r.max_steps)
    if r.task == "lm":
        tok, ids = lm_tokens(run_dir, r, data_dir)
        model = build_lm(r, tok.get_vocab_size())
        train_ids = ids["train"]
    else:
        from qslm.data.tokenizer import load_tokenizer, save_tokenizer

        init = resolve_init(r.init)
        tok = load_tokenizer(init["tokenizer"])
        save_tokenizer(tok, run_dir / "tokenizer.json")
        if r.family == "sdt":
            model = build_sdt(r, tok.get_vocab_size(), init["weights"])
        else:
            model = build_classifier(r, init["weights"])
        examples = sst2_examples(tok, data_dir)
    run = Run(r, run_dir, model)
    resumed = run.try_resume()
    model.train()
    print(f"qslm.train: {r.name} ({r.task}), {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{'resuming at step ' + str(run.step) if resumed else 'from scratch'}, {torch.get_num_threads()} threads",
          file=sys.stderr)
    bar = tqdm(total=stop, initial=run.step, disable=not progress, desc=r.name, unit="step")
    t_last = time.perf_counter()
    tokens_since = 0
    while run.step < stop:
        for g in run.opt.param_groups:
            g["lr"] = lr_at(run.step, r)
        if r.task == "lm":
            x, y = lm_batch(run, train_ids)
            _, loss = model(x, y)
            tokens_since += y.numel()
        else:
            xb, mask, labels = sst2_batch(run.step, examples["train"], r)
            if r.label_smoothing:
                logits = model(xb, attention_mask=mask)
                loss = torch.nn.functional.cross_entropy(logits, labels,
                                                         label_smoothing=r.label_smoothing)
            else:
                _, loss = model(xb, labels, attention_mask=mask)
            tokens_since += int(mask.sum())
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        run.opt.step()
        run.step += 1
        bar.update(1)
        now = time.perf_counter()
        evaluate = run.step % r.eval_every == 0 or run.step == stop
        if run.step % LOG_EVERY == 0 or evaluate:
            dt = now - t_last
            run.wall_s += dt
            row = {"step": run.step, "loss": float(loss.detach()), "lr": lr_at(run.step - 1, r),
                   "grad_norm": float(gnorm), "tokens_per_s": tokens_since / max(dt, 1e-9),
                   "wall_s": round(run.wall_s, 1)}
            t_last, tokens_since = now, 0
            if evaluate:
                if r.task == "lm":
                    vl = lm_val_loss(model, ids["valid"], r)
                    row.update(val_loss=vl, val_token_ppl=math.exp(vl))
                else:
                    row.update(dev_accuracy=sst2_accuracy(model, examples["dev"], r))
                t_last = time.perf_counter()
            append_jsonl(run.metrics, row)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **{k: f"{v:.3f}" for k, v in row.items()
                                                          if k in ("val_loss", "dev_accuracy")})
        if run.step % r.ckpt_every == 0 or run.step == stop:
            run.save()
    bar.close()
    return run.ckpt


# ---- sst2 initialisation from the LM --------------------------------------------------------------


def resolve_init(name: str) -> dict[str, Path]:
    """Weights and tokenizer of the LM an sst2 recipe starts from: the bundled model if present,
    else the final checkpoint of its run directory."""
    from qslm.zoo import bundled_dir

    z = bundled_dir(name)
    if (z / "model.safetensors").exists():
        return {"weights": z / "model.safetensors", "tokenizer": z / "tokenizer.json"}
    run = Path("runs") / name
    if (run / "ckpt.pt").exists():
        return {"weights": run / "ckpt.pt", "tokenizer": run / "tokenizer.json"}
    raise QslmError(f"the initial LM {name!r} is neither bundled ({z}) nor trained in {run}; "
                    f"run `python -m qslm.train run {name}` first")


def build_classifier(r: Recipe, weights: Path) -> torch.nn.Module:
    from qslm.models import SpikeGPT, SpikeGPTConfig, load_spikegpt

    torch.manual_seed(r.seed)
    if weights.suffix == ".pt":
        state = torch.load(weights, map_location="cpu", weights_only=False)
        cfg = dict(state["model_config"])
        cfg.update(num_classes=2, ctx_len=max(r.ctx_len, cfg["ctx_len"]), dropout=r.dropout)
        model = SpikeGPT(SpikeGPTConfig.from_dict(cfg))
        trunk = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(trunk, strict=False)
        if unexpected or any(not k.startswith("classify_head.") for k in missing):
            raise QslmError(f"{weights}: not a SpikeGPT LM checkpoint (missing {missing}, unexpected {unexpected})")
        return model
    model = load_spikegpt(weights, num_classes=2, dropout=r.dropout)
    model.train()
    return model


def lm_embedding(weights: Path) -> torch.Tensor:
    """``emb.weight`` (V, C) of an LM: a bundled safetensors file or a run's ``ckpt.pt``."""
    from qslm.models.checkpoint import read_state_dict

    if weights.suffix == ".pt":
        sd = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    else:
        sd, _ = read_state_dict(weights)
    if "emb.weight" not in sd:
        raise QslmError(f"{weights}: no 'emb.weight' to initialise the embedding from")
    return sd["emb.weight"].to(torch.float64)


def pca_embedding(emb: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of ``emb`` (V, C), centred, projected on their ``n`` principal directions and
    scaled to unit RMS (the scale of the N(0, 1) initialisation): (V, n) float32.

    Deterministic: each column's sign makes its largest-magnitude entry positive (so neither
    the SVD's sign ambiguity nor the data's sign matters)."""
    V, C = emb.shape
    if n > C:
        raise QslmError(f"emb_init = \"pca\" needs n_embd <= the LM's width {C}, got n_embd = {n}")
    x = emb.to(torch.float64)
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    z = x @ vh[:n].T  # (V, n)
    z = z * torch.sign(z.gather(0, z.abs().argmax(dim=0, keepdim=True)))
    return (z / z.pow(2).mean().sqrt()).to(torch.float32)


def build_sdt(r: Recipe, vocab_size: int, weights: Path) -> torch.nn.Module:
    """A fresh spike-driven encoder for recipe ``r`` (seeded), in training mode.

    ``emb_init = "pca"``: the embedding is the PCA projection of the init LM's embedding (same
    tokenizer). ``zero_init_residual``: γ of the norm that ends each residual branch
    (``attn.o_norm``, ``mlp.fc2_norm``) starts at 0, as ResNets' zero-init residual — the
    untrained encoder is then a bag of embeddings (emb + pos, pooled, head), which trains much
    faster on SST-2, and the spiking branches grow into it (their γ get gradients at once)."""
    from qslm.data.tokenizer import PAD_ID
    from qslm.models import SDTConfig, SpikeDrivenEncoder

    torch.manual_seed(r.seed)
    cfg = SDTConfig(vocab_size=vocab_size, n_layer=r.n_layer, n_embd=r.n_embd, num_classes=2,
                    mlp_ratio=r.mlp_ratio, t_sim=r.t_sim, ctx_len=r.ctx_len, pad_id=PAD_ID)
    model = SpikeDrivenEncoder(cfg)
    if r.emb_init == "pca":
        emb = lm_embedding(weights)
        if emb.shape[0] != vocab_size:
            raise QslmError(f"{weights}: embedding has {emb.shape[0]} rows but the tokenizer "
                            f"has {vocab_size} tokens")
        with torch.no_grad():
            model.emb.weight.copy_(pca_embedding(emb, r.n_embd))
    if r.zero_init_residual:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.o_norm.weight.zero_()
                block.mlp.fc2_norm.weight.zero_()
    return model.train()


# ---- CLI --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qslm.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train (or resume) a recipe")
    run.add_argument("recipe", help="recipe name in qslm/zoo/recipes.toml")
    run.add_argument("--out", type=Path, help="run directory (default runs/RECIPE)")
    run.add_argument("--data-dir", help="folder with the data sets (default: QSLM_DATA_DIR, cache, download)")
    run.add_argument("--max-steps", type=int, help="stop at this step (resumable later); default the recipe's")
    run.add_argument("--fresh", action="store_true", help="discard an existing checkpoint in --out")
    run.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    run.add_argument("--no-progress", action="store_true")
    exp = sub.add_parser("export", help="evaluate a finished run and bundle it into qslm/zoo")
    exp.add_argument("recipe")
    exp.add_argument("--out", type=Path, help="run directory (default runs/RECIPE)")
    exp.add_argument("--data-dir")
    exp.add_argument("--zoo", type=Path, help="bundle directory (default qslm/zoo/RECIPE)")
    exp.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        r = get_recipe(args.recipe)
        run_dir = args.out or Path("runs") / r.name
        if args.cmd == "run":
            if args.threads:
                torch.set_num_threads(args.threads)
            if args.max_steps is not None and args.max_steps < 1:
                raise QslmError(f"--max-steps must be >= 1, got {args.max_steps}")
            ckpt = train(r, run_dir, args.data_dir, args.fresh, args.max_steps, not args.no_progress)
            print(f"qslm.train: checkpoint {ckpt}", file=sys.stderr)
        else:
            from qslm.zoo.export import export_run

            card = export_run(r, run_dir, args.data_dir, args.zoo, progress=not args.no_progress)
            print(f"qslm.train: bundled {r.name}; model card {card}", file=sys.stderr)
    except QslmError as e:
        print(f"qslm.train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
