"""The flow campaign's figures: best yield so far, and measured yield against each parameter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ppu.drivers.flowchem.models import LIGANDS, PROCESS_BOX

_COLOURS = dict(zip(LIGANDS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))


def plot_best(summary: dict[str, Any], path: Path) -> None:
    """Best measured yield and its true expected yield against experiments, with random search and the optimum."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    n = range(1, len(summary["best_curve"]) + 1)
    ax.step(n, summary["best_curve"], where="post", label="best measured yield", color="tab:blue")
    ax.step(n, summary["true_best_curve"], where="post", label="true expected yield of those recipes", color="tab:blue",
            linestyle="--")
    rb = summary["random_baseline_curve"]
    ax.step(range(1, len(rb) + 1), rb, where="post", label="random search (median of 20)", color="grey")
    if "true_optimum" in summary:
        ax.axhline(summary["true_optimum"]["yield"], color="black", linewidth=0.8, label="world optimum")
    ax.set_xlabel("experiments (reactions)")
    ax.set_ylabel("yield of P")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary['campaign']}: {summary['strategy']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_yield_vs_parameters(experiments: Sequence[Any], path: Path) -> None:
    """Measured yield against each continuous parameter, coloured by ligand; later experiments drawn larger."""
    fig, axes = plt.subplots(1, len(PROCESS_BOX), figsize=(3.2 * len(PROCESS_BOX), 3.2), sharey=True)
    done = [e for e in experiments if e.product_yield is not None]
    for ax, (name, (lo, hi, unit)) in zip(axes, PROCESS_BOX.items(), strict=True):
        for ligand in LIGANDS:
            pts = [e for e in done if e.recipe.ligand == ligand and e.status != "clogged"]
            if pts:
                ax.scatter([getattr(e.recipe, name) for e in pts], [e.product_yield for e in pts],
                           s=[14 + 3 * e.index for e in pts], color=_COLOURS[ligand], alpha=0.8, label=ligand)
            clogged = [e for e in done if e.recipe.ligand == ligand and e.status == "clogged"]
            if clogged:  # no fraction: drawn at 0 as crosses
                ax.scatter([getattr(e.recipe, name) for e in clogged], [0.0] * len(clogged), marker="x",
                           color=_COLOURS[ligand], label=f"{ligand} (clogged)")
        ax.set_xlim(lo, hi)
        ax.set_xlabel(f"{name} ({unit})")
    axes[0].set_ylabel("measured yield")
    axes[0].set_ylim(0, 1)
    axes[-1].legend(fontsize=7, title="ligand", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
