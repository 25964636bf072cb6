"""Next-token choice for generation: greedy, or the sampling of SpikeGPT's ``run.py`` (spec §6).

``run.py`` samples as follows: the logit of token 0 (``<|endoftext|>``) is set to −1e9, then
``softmax``, a nucleus cut at ``top_p`` (every token whose probability is below the smallest one
of the nucleus is dropped), then ``probs ** (1 / temperature)``, then a multinomial draw from the
renormalized result. :class:`Sampling` holds these options (``ban_tokens=(0,)`` is run.py's
end-of-text ban); ``temperature == 0`` is greedy decoding (argmax of the logits with the banned
tokens removed), the default. :meth:`Sampling.run_py` gives run.py's settings (216M:
``temperature=1.5``, ``top_p=0.7``, token 0 banned). ``top_k`` (keep the k most likely tokens,
ties with the k-th kept) is an extra, applied before the nucleus cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from qslm.errors import GenerationError

__all__ = ["GREEDY", "Sampling", "next_token"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen (see the module docstring for the exact order)."""

    temperature: float = 0.0  # 0: greedy (argmax); > 0: probs ** (1/temperature), multinomial
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1: no cut
    top_k: int | None = None  # keep only the k most likely tokens (None: all)
    seed: int | None = None  # seed of the sampling generator (None: nondeterministic)
    ban_tokens: tuple[int, ...] = ()  # token ids never chosen (run.py bans 0, <|endoftext|>)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise GenerationError(f"temperature must be a finite number >= 0 (0 = greedy), "
                                  f"got {t!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {p!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise GenerationError(f"top_k must be an integer >= 1 or None, got {k!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
            raise GenerationError(f"seed must be an integer or None, got {s!r}")
        try:
            bans = tuple(int(b) for b in self.ban_tokens)
        except (TypeError, ValueError):
            raise GenerationError(f"ban_tokens must be token ids, got {self.ban_tokens!r}") from None
        if any(b < 0 for b in bans):
            raise GenerationError(f"ban_tokens must be token ids >= 0, got {bans}")
        object.__setattr__(self, "ban_tokens", bans)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def run_py(cls, seed: int | None = None) -> Sampling:
        """The settings of SpikeGPT's ``run.py`` (spec §6): T = 1.5, top-p 0.7, token 0 banned."""
        return cls(temperature=1.5, top_p=0.7, seed=seed, ban_tokens=(0,))

    def generator(self) -> torch.Generator:
        g = torch.Generator()
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


GREEDY = Sampling()


def next_token(logits: Tensor, sampling: Sampling = GREEDY,
               generator: torch.Generator | None = None) -> int:
    """The next token id from next-token ``logits`` ``(V,)`` (see the module docstring)."""
    if not isinstance(logits, Tensor) or logits.ndim != 1 or logits.numel() == 0:
        raise GenerationError("next_token needs next-token logits of shape (V,)")
    x = logits.detach().to(torch.float64)
    V = x.numel()
    if sampling.ban_tokens:
        bans = [b for b in sampling.ban_tokens if b < V]
        if len(bans) >= V:
            raise GenerationError("every token of the vocabulary is banned")
        x = x.clone()
        x[bans] = -math.inf
    if sampling.greedy:
        return int(torch.argmax(x))
    probs = torch.softmax(x, dim=0)
    if sampling.top_k is not None and sampling.top_k < V:
        kth = torch.topk(probs, sampling.top_k).values[-1]
        probs = torch.where(probs < kth, 0.0, probs)
    if sampling.top_p < 1.0:
        sorted_p = torch.sort(probs, descending=True).values
        cum = torch.cumsum(sorted_p, dim=0)
        over = cum > sampling.top_p * float(cum[-1])  # relative to the mass left by top_k
        cut_at = int(torch.argmax(over.to(torch.int8))) if bool(over.any()) else V - 1
        cutoff = sorted_p[cut_at]
        probs = torch.where(probs < cutoff, 0.0, probs)
    if sampling.temperature != 1.0:
        probs = probs ** (1.0 / sampling.temperature)
    total = float(probs.sum())
    if not math.isfinite(total) or total <= 0:  # a tiny temperature underflows: take the top
        return int(torch.argmax(x))
    g = generator if generator is not None else sampling.generator()
    return int(torch.multinomial(probs / total, 1, generator=g))
