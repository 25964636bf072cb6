"""Bundle a finished training run: evaluate the fp16 weights users will get, write
``qslm/zoo/NAME/{model.safetensors,tokenizer.json,card.json}`` and ``docs/models/NAME.md``.

A spike-driven encoder (recipe ``family = "sdt"``) is bundled in its deployed form: the
BatchNorms are folded into the block Linears (in float64, then stored as fp16 matrices and
float32 biases), so the bundle's block Linears are "spikes × weights + bias" and every metric of
the card is measured on that folded fp16 model. Its card also records the init LM whose
tokenizer (and, with ``emb_init = "pca"``, embedding) it starts from, and the input firing rate
of every block Linear (``input_rates``, what ``model.workload()`` takes)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qslm._io import atomic_write_text
from qslm.errors import QslmError
from qslm.zoo import bundled_dir

DOCS_MODELS = Path(__file__).resolve().parents[2] / "docs" / "models"
# Tokens of the WikiText-2 test split (or SST-2 dev sentences) in the fixed subset whose metric
# the card records and a test reproduces from the bundle.
SUBSET_TOKENS = 8192
SUBSET_SENTENCES = 128
# Windows (or sentences) over which the firing rates are measured.
RATE_WINDOWS = 16


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lm_subset_nll(model: torch.nn.Module, test_ids: np.ndarray, ctx_len: int) -> float:
    """Mean next-token NLL over the first SUBSET_TOKENS test tokens, in chunks of ctx_len + 1."""
    ids = torch.from_numpy(test_ids[: SUBSET_TOKENS + 1].astype(np.int64))
    windows = [ids[i : i + ctx_len + 1] for i in range(0, len(ids) - ctx_len - 1 + 1, ctx_len)]
    w = torch.stack(windows)
    with torch.no_grad():
        _, loss = model(w[:, :-1], w[:, 1:])
    return float(loss)


def sst2_subset_accuracy(model: torch.nn.Module, dev: list, ctx_len: int) -> float:
    from qslm.eval import classification_accuracy, classification_batches

    res = classification_accuracy(model, classification_batches(dev[:SUBSET_SENTENCES], 64, max_len=ctx_len),
                                  progress=False)
    return float(res["accuracy"])


def export_run(recipe: Any, run_dir: Path, data_dir: str | None, zoo: Path | None,
               progress: bool = True, docs_dir: Path | None = None,
               max_eval_tokens: int | None = None) -> Path:
    """Evaluate the run's final checkpoint in fp16 form and bundle it; returns the card path.

    ``max_eval_tokens`` evaluates only a prefix of each WikiText-2 split (quick checks; the card
    then says so); bundled models are evaluated on the whole splits."""
    from qslm.data.datasets import resolve
    from qslm.data.tokenizer import load_tokenizer
    from qslm.eval import (classification_accuracy, classification_batches, count_words,
                           count_words_in_tokens, lm_perplexity)
    from qslm.models import load_checkpoint, save_safetensors
    from qslm.train import lm_tokens, sst2_examples

    ckpt_path = run_dir / "ckpt.pt"
    if not ckpt_path.exists():
        raise QslmError(f"no checkpoint in {run_dir}: train it first (python -m qslm.train run {recipe.name})")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if state["recipe"] != recipe.to_dict():
        raise QslmError(f"{ckpt_path} was trained with another recipe than {recipe.name}")
    if state["step"] < recipe.max_steps:
        raise QslmError(f"{ckpt_path} stopped at step {state['step']} of {recipe.max_steps}: "
                        f"resume it with python -m qslm.train run {recipe.name}")
    model = deployed_model(state)

    out = zoo or bundled_dir(recipe.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{recipe.name}-", dir=out.parent))
    try:
        save_safetensors(model, staging / "model.safetensors")
        shutil.copyfile(run_dir / "tokenizer.json", staging / "tokenizer.json")
        # Every metric below is measured on the bundle as users load it (fp16 matrices).
        bundle = load_checkpoint(staging / "model.safetensors")
        tok = load_tokenizer(staging / "tokenizer.json")
        metrics: dict[str, Any] = {}
        if recipe.task == "lm":
            _, ids = lm_tokens(run_dir, recipe, data_dir)
            from qslm.data.datasets import load_wikitext2

            for split in ("valid", "test"):
                if max_eval_tokens is None:
                    n_words = count_words(load_wikitext2(split, data_dir))
                else:
                    n_words = count_words_in_tokens(tok, ids[split][:max_eval_tokens])
                res = lm_perplexity(bundle, ids[split], ctx_len=recipe.ctx_len, batch_size=32,
                                    n_words=n_words, max_tokens=max_eval_tokens, bos_id=0, progress=progress)
                metrics[split] = {k: res[k] for k in ("token_ppl", "word_ppl", "n_tokens_scored", "n_words")}
                metrics[split]["whole_split"] = max_eval_tokens is None
            metrics["subset"] = {"what": f"mean NLL of the first {SUBSET_TOKENS} test tokens "
                                         f"(windows of {recipe.ctx_len})",
                                 "value": lm_subset_nll(bundle, ids["test"], recipe.ctx_len)}
            w = torch.from_numpy(ids["test"][: RATE_WINDOWS * recipe.ctx_len].astype(np.int64))
            with bundle.record_spikes() as rec, torch.no_grad():
                bundle(w.view(RATE_WINDOWS, recipe.ctx_len))
            data_files = ["wikitext-2-raw"]
        else:
            ex = sst2_examples(tok, data_dir)
            res = classification_accuracy(bundle, classification_batches(ex["dev"], 64, max_len=recipe.ctx_len),
                                          progress=progress)
            metrics["dev"] = {"accuracy": res["accuracy"], "n": res["n"]}
            metrics["subset"] = {"what": f"accuracy on the first {SUBSET_SENTENCES} dev sentences",
                                 "value": sst2_subset_accuracy(bundle, ex["dev"], recipe.ctx_len)}
            from qslm.eval import pad_batch

            ids, mask = pad_batch([e[0] for e in ex["dev"][:RATE_WINDOWS * 4]], max_len=recipe.ctx_len)
            with bundle.record_spikes() as rec, torch.no_grad():
                bundle(ids, attention_mask=mask)
            data_files = ["wikitext-2-raw", "sst2"]
        rates = rec.rates()
        sdt = getattr(recipe, "family", "spikegpt") == "sdt"
        checksums = {}
        for name in data_files:
            root = resolve(name, data_dir)
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.suffix in (".raw", ".tsv"):
                    checksums[f"{name}/{p.name}"] = _sha256(p)
        history = [json.loads(line) for line in open(run_dir / "metrics.jsonl", encoding="utf-8")]
        card = {
            "format_version": 1,
            "name": recipe.name,
            "recipe": recipe.to_dict(),
            "command": f"python -m qslm.train run {recipe.name} && python -m qslm.train export {recipe.name}",
            "config": bundle.config.to_dict(),
            "parameters": sum(p.numel() for p in bundle.parameters()),
            "bundle_bytes": os.path.getsize(staging / "model.safetensors") + os.path.getsize(staging / "tokenizer.json"),
            "steps": state["step"],
            "train_wall_s": state["wall_s"],
            "metrics": metrics,
            "firing_rates": rates,
            "data_sha256": checksums,
            **(_sdt_card_fields(recipe, rec) if sdt else {}),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "exported": datetime.date.today().isoformat(),
        }
        with open(staging / "card.json", "w", encoding="utf-8") as f:
            json.dump(card, f, indent=1)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return write_model_card(card, history, docs_dir or DOCS_MODELS)


def write_model_card(card: dict[str, Any], history: list[dict[str, Any]], docs: Path = DOCS_MODELS) -> Path:
    """docs/models/NAME.md (and NAME-curve.png, the training curve)."""
    docs.mkdir(parents=True, exist_ok=True)
    name = card["name"]
    from qslm.zoo.plots import training_curve

    fig = training_curve(history, name)
    fig.savefig(docs / f"{name}-curve.png", dpi=110)
    m = card["metrics"]
    c = card["config"]
    sdt = c.get("family") == "spike-driven-encoder"
    if sdt:
        what = (f"A spike-driven encoder classifier ({c['n_layer']} blocks × {c['n_embd']} channels, "
                f"MLP {c['mlp_ratio'] * c['n_embd']}, {c['t_sim']} simulation steps, vocabulary "
                f"{c['vocab_size']}; every block Linear takes spikes)")
    else:
        what = (f"A SpikeGPT ({c['n_layer']} blocks × {c['n_embd']} channels, "
                f"vocabulary {c['vocab_size']})")
    lines = [f"# {name}", "",
             f"{what} trained by qslm on this machine: {card['machine']}.", "",
             "Reproduce:", "", "```bash", card["command"], "```", "",
             "| | |", "|---|---|",
             f"| parameters | {card['parameters']:,} |",
             f"| bundle size (fp16 matrices + tokenizer) | {card['bundle_bytes'] / 2**20:.2f} MiB |",
             f"| seed | {card['recipe']['seed']} |",
             f"| steps | {card['steps']:,} |",
             f"| training wall time | {card['train_wall_s'] / 3600:.2f} h |"]
    if "test" in m:
        for split in ("valid", "test"):
            lines.append(f"| WikiText-2 {split}: word-level / token-level perplexity | "
                         f"{m[split]['word_ppl']:.1f} / {m[split]['token_ppl']:.2f} |")
    if "dev" in m:
        lines.append(f"| SST-2 dev accuracy | {100 * m['dev']['accuracy']:.2f} % ({m['dev']['n']} sentences) |")
    lines.append(f"| fixed-subset check ({m['subset']['what']}) | {m['subset']['value']:.6f} |")
    if sdt:
        init = card.get("init", {})
        lines += ["", "Stored with its norms folded (`norms_folded = true`): each block Linear is "
                  "\"spikes × weights + bias\" (fp16 weights, float32 biases), the deployed form that "
                  "search, quantization and runtime see; every metric above is of this bundle.",
                  "", f"Starts from `{init.get('recipe', card['recipe'].get('init'))}`: its "
                  f"{init.get('uses', 'tokenizer')} (tokenizer sha256 `{init.get('tokenizer_sha256', '?')}`"
                  + (f", weights sha256 `{init['weights_sha256']}`" if "embedding" in init.get("uses", "") else "")
                  + ")."]
    lines += ["", "Firing rates (fraction of LIF outputs that spike, measured on evaluation data"
              + ("; `attn.gate` is the AND of the gate and V spikes, the input of `attn.o`" if sdt else "")
              + "):", "", "| LIF | rate |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in card["firing_rates"].items()]
    lines += ["", "Data (sha256):", ""] + [f"- `{k}`: `{v}`" for k, v in card["data_sha256"].items()]
    lines += ["", f"Training curve: `{name}-curve.png`.", "",
              "Recipe: " + ", ".join(f"{k} = {v if v != '' else chr(34) * 2}" for k, v in card["recipe"].items()
                                     if k != "name"), ""]
    return atomic_write_text(docs / f"{name}.md", "\n".join(lines))



def deployed_model(state: dict[str, Any]) -> torch.nn.Module:
    """The model of a training checkpoint (``ckpt.pt`` contents) in the form to bundle, eval
    mode: a SpikeGPT as trained; a spike-driven encoder with its norms folded (in float64)."""
    from qslm.models import SDTConfig, SpikeDrivenEncoder, SpikeGPT, SpikeGPTConfig
    from qslm.models.sdt import FAMILY as SDT_FAMILY

    cfg = state["model_config"]
    if cfg.get("family") == SDT_FAMILY:
        model = SpikeDrivenEncoder(SDTConfig.from_dict(cfg))
        model.load_state_dict(state["model"])
        return model.double().eval().fold_norms()
    model = SpikeGPT(SpikeGPTConfig.from_dict(cfg))
    model.load_state_dict(state["model"])
    return model.eval()


def _sdt_card_fields(recipe: Any, rec: Any) -> dict[str, Any]:
    from qslm.train import resolve_init

    init = resolve_init(recipe.init)
    return {
        "init": {"recipe": recipe.init, "uses": "tokenizer" + (" and embedding (PCA)" if recipe.emb_init == "pca" else ""),
                 "weights_sha256": _sha256(init["weights"]), "tokenizer_sha256": _sha256(init["tokenizer"])},
        "input_rates": rec.input_rates(),
    }
