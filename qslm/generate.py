"""Generate text with a packed model on the Rust kernels (the recurrent form, spec §6).

    python -m qslm.generate --model out/model.qslm.safetensors --prompt "The meaning of" \\
        --max-new-tokens 64                                   # greedy (the default)
    python -m qslm.generate --model out/ --prompt "..." --sample --seed 0   # run.py's sampling

Sampling (spec §6, as SpikeGPT's run.py): ``--sample`` uses run.py's settings (temperature 1.5,
top-p 0.7, ``<|endoftext|>`` banned); ``--temperature``, ``--top-p`` and ``--top-k`` set (and
imply) sampling; ``--ban-eos`` bans token 0 also in greedy decoding. The prompt is fed token by
token; an empty prompt starts from ``<|endoftext|>``.

Tokenizer: ``--tokenizer FILE``, else ``tokenizer.json`` beside the packed file, else the
tokenizer of the model the search that wrote the folder started from (``search.json``'s
``model``: a bundled name or a checkpoint with ``tokenizer.json`` beside it).

Output: the prompt and its continuation on stdout (``--json``: one JSON object with the token ids,
text, speed and the measured firing rates); ``--stats`` adds speed and firing rates on stderr.
Bad input (a missing or invalid packed file, no tokenizer, bad options) prints one line
``qslm.generate: error: ...`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

PROG = "qslm.generate"
EXIT_BAD_INPUT = 2


class _InputError(Exception):
    """Bad command-line input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise _InputError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="PATH",
                   help="packed model file (model.qslm.safetensors) or the folder holding it")
    p.add_argument("--prompt", default="", help="prompt text (default: empty → <|endoftext|>)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="tokens to generate (default 64)")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (default: beside the "
                   "packed file, or the search's model)")
    p.add_argument("--sample", action="store_true",
                   help="sample as run.py (temperature 1.5, top-p 0.7, <|endoftext|> banned) "
                   "instead of greedy decoding")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="sampling temperature > 0 (implies --sample; 0 = greedy)")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus mass in (0, 1] "
                   "(implies --sample)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens "
                   "(implies --sample)")
    p.add_argument("--seed", type=int, help="seed of the sampling generator")
    p.add_argument("--ban-eos", action="store_true",
                   help="never choose <|endoftext|> (token 0), also when greedy")
    p.add_argument("--stop-at-eos", action="store_true", help="stop after <|endoftext|>")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--stats", action="store_true",
                   help="speed and measured firing rates on stderr")
    return p


def _find_tokenizer(model_path: Path, given: str | None) -> Path:
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise _InputError(f"--tokenizer {given}: no such file")
        return p
    folder = model_path if model_path.is_dir() else model_path.parent
    candidates = [folder / "tokenizer.json"]
    search = folder / "search.json"
    if search.is_file():
        try:
            ref = json.loads(search.read_text("utf-8")).get("model")
        except (OSError, ValueError, AttributeError):
            ref = None
        if isinstance(ref, str) and ref:
            from qslm.zoo import bundled_dir

            if "/" not in ref and "\\" not in ref:
                candidates.append(bundled_dir(ref) / "tokenizer.json")
            candidates.append(Path(ref).parent / "tokenizer.json")
    for c in candidates:
        if c.is_file():
            return c
    raise _InputError(f"no tokenizer found for {model_path} (looked for "
                      f"{', '.join(str(c) for c in candidates)}): pass --tokenizer FILE")


def _sampling(args: argparse.Namespace):
    from qslm.runtime import Sampling

    explicit = any(v is not None for v in (args.temperature, args.top_p, args.top_k))
    if args.temperature == 0:
        if args.top_p is not None or args.top_k is not None:
            raise _InputError("--temperature 0 is greedy decoding: --top-p/--top-k do not apply")
        return Sampling(seed=args.seed, ban_tokens=(0,) if args.ban_eos else ())
    if args.sample or explicit:
        base = Sampling.run_py()
        return Sampling(
            temperature=base.temperature if args.temperature is None else args.temperature,
            top_p=base.top_p if args.top_p is None else args.top_p,
            top_k=args.top_k, seed=args.seed,
            ban_tokens=(0,) if (args.sample or args.ban_eos) else ())
    return Sampling(seed=args.seed, ban_tokens=(0,) if args.ban_eos else ())


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.max_new_tokens < 0:
        raise _InputError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    model_path = Path(args.model)
    if not model_path.exists():
        raise _InputError(f"--model {args.model}: no such file or folder")
    sampling = _sampling(args)
    tok_path = _find_tokenizer(model_path, args.tokenizer)

    from qslm.data.tokenizer import EOT_ID, decode, encode, load_tokenizer
    from qslm.runtime import load_runtime

    tok = load_tokenizer(tok_path)
    t0 = time.perf_counter()
    rt = load_runtime(model_path)
    load_s = time.perf_counter() - t0
    if rt.config.is_classifier:
        raise _InputError(f"{model_path} is a classifier ({rt.config.num_classes} classes): it "
                          "cannot generate text")
    prompt_ids = encode(tok, args.prompt) or [EOT_ID]
    if max(prompt_ids) >= rt.config.vocab_size:
        raise _InputError(f"the tokenizer {tok_path} produced token id {max(prompt_ids)}, outside "
                          f"the model's vocabulary of {rt.config.vocab_size}: wrong tokenizer?")
    t0 = time.perf_counter()
    new = rt.generate(prompt_ids, args.max_new_tokens, sampling,
                      stop_tokens=(EOT_ID,) if args.stop_at_eos else ())
    gen_s = time.perf_counter() - t0
    n_steps = len(prompt_ids) + max(len(new) - 1, 0)
    speed = n_steps / gen_s if gen_s > 0 else float("inf")
    text = decode(tok, new)
    rates = rt.firing_rates()
    if args.json:
        print(json.dumps({"prompt": args.prompt, "prompt_ids": prompt_ids, "tokens": new,
                          "text": text, "load_s": load_s, "generate_s": gen_s,
                          "tokens_per_s": speed, "firing_rates": rates}))
    else:
        print(args.prompt + text)
    if args.stats:
        mean = sum(rates.values()) / len(rates) if rates else 0.0
        print(f"{PROG}: loaded in {load_s:.2f} s; {n_steps} steps ({len(prompt_ids)} prompt + "
              f"{len(new)} generated) in {gen_s:.2f} s = {speed:.1f} tokens/s; mean firing rate "
              f"{mean:.4f}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from qslm.errors import QslmError

    try:
        return _run(argv)
    except (_InputError, QslmError, OSError) as exc:
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
