"""Plots of training runs (matplotlib imported lazily, Agg backend)."""

from __future__ import annotations

from typing import Any


def training_curve(history: list[dict[str, Any]], title: str):
    """Training loss and the evaluation metric (validation loss or dev accuracy) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], lw=0.8, label="training loss (batch)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ev = [h for h in history if "val_loss" in h]
    if ev:
        ax.plot([h["step"] for h in ev], [h["val_loss"] for h in ev], "o-", label="validation loss")
    acc = [h for h in history if "dev_accuracy" in h]
    if acc:
        ax2 = ax.twinx()
        ax2.plot([h["step"] for h in acc], [100 * h["dev_accuracy"] for h in acc], "s-", color="C2",
                 label="dev accuracy")
        ax2.set_ylabel("dev accuracy (%)")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if acc else "upper right")
    ax.set_title(title)
    fig.tight_layout()
    return fig
