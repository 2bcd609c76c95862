"""Figures of the analysis (matplotlib, Agg): every plot reads only numbers in analysis.json.

Classes are always drawn head to tail (most training images first, ties by class index).
The object-oriented API (Figure + FigureCanvasAgg) keeps no global pyplot state, so plots
can be drawn from the training loop as well as from `ncl_jax.analyze`.
"""

from __future__ import annotations

import os

import numpy as np

from ncl_jax.core.metrics import GROUPS, accuracy_summary

RULE_TITLES = {
    "paper": "paper rule (many > 100, few < 20)",
    "official": "official rule (many >= 100, few <= 20)",
}
MAX_TICK_LABELS = 30  # class names on the x axis up to this many classes, ranks beyond


def new_figure(width: float, height: float):
    # lazy: matplotlib costs a second to import and only figure-writing code needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


AGGREGATION_NAMES = {"mean_logits": "mean of logits", "mean_probs": "mean of probabilities"}


def setting_caption(analysis: dict) -> str:
    """Which checkpoints and ensemble rule the figures show, e.g. "checkpoint: latest (step
    2895, epoch 15); ensemble: mean of logits"."""
    parts = []
    for run in analysis["runs"]:
        ckpt = run.get("checkpoint") or {}
        kind = {"checkpoints": "latest"}.get(ckpt.get("kind"), ckpt.get("kind", "?"))
        parts.append(f"{kind} (step {ckpt.get('step', '?')}, epoch {ckpt.get('epoch', '?')})")
    checkpoints = parts[0] if len(set(parts)) == 1 else "; ".join(parts)
    aggregation = AGGREGATION_NAMES.get(analysis["runs"][0].get("aggregation"), "?")
    return f"checkpoint: {checkpoints}; ensemble: {aggregation}"


def _caption(fig, analysis: dict) -> None:
    fig.suptitle(setting_caption(analysis), fontsize=7, color="0.35")


def palette(n: int) -> list:
    from matplotlib import colormaps  # lazy: as in new_figure

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def head_to_tail(train_count) -> np.ndarray:
    """Class indices sorted by training count, descending (stable: ties keep index order)."""
    return np.argsort(-np.asarray(train_count), kind="stable")


def _as_array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def _class_axis(ax, order, class_names, train_count) -> None:
    positions = np.arange(len(order))
    if len(order) <= MAX_TICK_LABELS:
        ax.set_xticks(positions)
        ax.set_xticklabels(
            [f"{class_names[c]}\n({train_count[c]})" for c in order], rotation=60, fontsize=7
        )
        ax.set_xlabel("class (training images), head to tail")
    else:
        ax.set_xlabel("class rank by training images, head to tail")


def _draw_per_class(ax, runs, *, experts: bool = True) -> None:
    """Per-class top-1 of each run's ensemble (and experts, thin) with the training counts
    as grey bars on a log axis behind."""
    first = runs[0]
    counts = np.asarray(first["per_class"]["train_count"])
    order = head_to_tail(counts)
    positions = np.arange(len(order))
    counts_ax = ax.twinx()
    counts_ax.bar(positions, counts[order], color="0.85", width=0.8, zorder=0)
    counts_ax.set_yscale("log")
    counts_ax.set_ylabel("training images (log)", color="0.4")
    ax.set_zorder(counts_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    for run, color in zip(runs, palette(len(runs)), strict=True):
        top1 = run["per_class"]["top1"]
        ax.plot(
            positions,
            _as_array(top1["ensemble"])[order],
            color=color,
            lw=2,
            marker="o",
            ms=3,
            label=f"{run['label']} ensemble" if run["num_experts"] > 1 else run["label"],
        )
        if experts and run["num_experts"] > 1:
            for k in range(run["num_experts"]):
                ax.plot(
                    positions,
                    _as_array(top1[f"expert_{k}"])[order],
                    color=color,
                    lw=0.8,
                    ls="--",
                    alpha=0.6,
                    label=f"{run['label']} experts" if k == 0 else None,
                )
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    _class_axis(ax, order, first["class_names"], counts)
    ax.legend(fontsize=7, loc="lower left")


def plot_per_class(analysis: dict, path: str) -> str:
    """Per-class top-1 against the class's training count, head to tail, runs overlaid."""
    runs = analysis["runs"]
    fig = new_figure(10, 4.8)
    ax = fig.add_subplot()
    _draw_per_class(ax, runs)
    ax.set_title(f"Per-class top-1 on {runs[0]['eval_split']}, {runs[0]['dataset']}")
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_groups(analysis: dict, path: str) -> str:
    """Many / medium / few top-1 of each run's ensemble and best expert, under both rules."""
    runs = analysis["runs"]
    fig = new_figure(10, 4)
    for ax, rule in zip(fig.subplots(1, 2, sharey=True), ("paper", "official"), strict=True):
        bars = []
        for run in runs:
            bars.append((f"{run['label']} ensemble", run["groups"][rule]["ensemble"]))
            if run["num_experts"] > 1:
                best = run["best_expert"]
                bars.append(
                    (f"{run['label']} expert {best}", run["groups"][rule][f"expert_{best}"])
                )
        width = 0.8 / len(bars)
        for b, ((name, scores), color) in enumerate(zip(bars, palette(len(bars)), strict=True)):
            x = np.arange(len(GROUPS)) + (b - (len(bars) - 1) / 2) * width
            values = [scores[g] if scores[g] is not None else 0.0 for g in GROUPS]
            ax.bar(x, values, width, label=name, color=color)
            for xi, g in zip(x, GROUPS, strict=True):
                if scores[g] is None:
                    ax.text(xi, 1, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
        sizes = {g: len(runs[0]["group_classes"][rule][g]) for g in GROUPS}
        ax.set_xticks(np.arange(len(GROUPS)))
        ax.set_xticklabels([f"{g}\n({sizes[g]} classes)" for g in GROUPS])
        ax.set_title(RULE_TITLES[rule], fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].set_ylabel("top-1 (%)")
    fig.axes[0].legend(fontsize=7)
    _caption(fig, analysis)
    return save_figure(fig, path)


def kl_curves(analysis: dict) -> list[tuple[str, dict]]:
    """What Fig. 1 / Fig. 5b compare: the experts of each multi-expert run (mean over pairs)
    and every two runs trained with the same recipe but another seed."""
    curves = [
        (f"{run['label']}: between its experts", run["kl_experts"])
        for run in analysis["runs"]
        if run["kl_experts"] is not None
    ]
    curves += [
        (f"{a} vs {b} (two seeds)", pair)
        for pair in analysis["kl_between_runs"]
        if pair["same_recipe"]
        for a, b in [pair["runs"]]
    ]
    return curves


def plot_kl_per_class(analysis: dict, path: str) -> str | None:
    """Fig. 1: per-class mean KL between two networks' predictions, head to tail."""
    curves = kl_curves(analysis)
    if not curves:
        return None
    first = analysis["runs"][0]
    counts = np.asarray(first["per_class"]["train_count"])
    order = head_to_tail(counts)
    fig = new_figure(10, 4.5)
    ax = fig.add_subplot()
    for (name, kl), color in zip(curves, palette(len(curves)), strict=True):
        ax.plot(
            np.arange(len(order)),
            _as_array(kl["per_class"])[order],
            color=color,
            lw=2,
            marker="o",
            ms=3,
            label=name,
        )
    ax.set_ylabel("mean symmetric KL (nats)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    _class_axis(ax, order, first["class_names"], counts)
    ax.legend(fontsize=8)
    ax.set_title("KL divergence between two networks' predictions per class (paper Fig. 1)")
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_kl_groups(analysis: dict, path: str) -> str | None:
    """Fig. 5b: mean pairwise KL per class group (official rule) and over all classes."""
    curves = kl_curves(analysis)
    if not curves:
        return None
    rule = "official"
    # Groups without test images in every curve (CIFAR-10-LT has no few class) are left out.
    groups = [
        g for g in ("all", *GROUPS) if any(kl["groups"][rule][g] is not None for _, kl in curves)
    ]
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    width = 0.8 / len(curves)
    for c, ((name, kl), color) in enumerate(zip(curves, palette(len(curves)), strict=True)):
        x = np.arange(len(groups)) + (c - (len(curves) - 1) / 2) * width
        values = [kl["groups"][rule][g] for g in groups]
        ax.bar(x, [0.0 if v is None else v for v in values], width, label=name, color=color)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel("mean symmetric KL (nats)")
    ax.set_title(
        f"KL between two networks per class group, {RULE_TITLES[rule]} (Fig. 5b)", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_hardest_negative(analysis: dict, path: str) -> str:
    """Fig. 5a: distribution of the hardest negative class's probability, runs overlaid."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    runs = analysis["runs"]
    for run, color in zip(runs, palette(len(runs)), strict=True):
        hist = run["hardest_negative"]
        counts = np.asarray(hist["counts"]["ensemble"], np.float64)
        edges = np.asarray(hist["bin_edges"])
        mean = hist["mean"]["ensemble"]
        ax.stairs(
            100 * counts / counts.sum(),
            edges,
            color=color,
            lw=2,
            label=f"{run['label']} (mean {mean:.3f})",
        )
    ax.set_xlabel("probability of the hardest negative class (largest non-label softmax)")
    ax.set_ylabel("test images (%)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Score of the hardest negative class, ensemble (paper Fig. 5a)")
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_test_distributions(analysis: dict, path: str) -> str | None:
    """Ensemble top-1 against the test class distribution (forward50 ... uniform ...
    backward50), runs overlaid: raw logits solid, adjusted by the known test prior dashed.
    None when no run has a `test_distributions` section."""
    runs = [run for run in analysis["runs"] if run.get("test_distributions")]
    if not runs:
        return None
    names = runs[0]["test_distributions"]["names"]
    fig = new_figure(8, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    for run, color in zip(runs, palette(len(runs)), strict=True):
        section = run["test_distributions"]["distributions"]
        raw = [section[n]["ensemble"]["top1"] for n in names]
        adjusted = [section[n]["prior_adjusted"]["ensemble"]["top1"] for n in names]
        ax.plot(x, raw, "-o", color=color, lw=2, ms=4, label=f"{run['label']} raw")
        ax.plot(
            x, adjusted, "--s", color=color, lw=1.3, ms=3, label=f"{run['label']} prior-adjusted"
        )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("test class distribution (forward: head classes most frequent, as in training)")
    ax.set_ylabel("ensemble top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Test-agnostic evaluation: top-1 under shifted test priors (SADE / BalPoE)")
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_reliability(analysis: dict, path: str) -> str:
    """Reliability diagram and ECE of the ensemble and the best expert, one panel per run."""
    runs = analysis["runs"]
    columns = min(len(runs), 3)
    rows = -(-len(runs) // columns)
    fig = new_figure(3.8 * columns, 3.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes[len(runs) :]:
        ax.set_visible(False)
    for ax, run in zip(axes, runs, strict=False):
        models = ["ensemble"]
        if run["num_experts"] > 1:
            models.append(f"expert_{run['best_expert']}")
        for model, color in zip(models, palette(len(models)), strict=True):
            rel = run["reliability"][model]
            centers = np.asarray(rel["bin_edges"])[:-1] + 0.5 / len(rel["count"])
            acc = _as_array(rel["accuracy"])
            ax.plot(
                centers,
                acc,
                marker="o",
                ms=3,
                color=color,
                label=f"{model.replace('_', ' ')}: ECE {100 * run['ece'][model]:.1f}%",
            )
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top softmax probability)")
        ax.set_title(run["label"], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    for ax in axes[::columns]:
        ax.set_ylabel("accuracy in the confidence bin")
    _caption(fig, analysis)
    return save_figure(fig, path)


def plot_confusion(run: dict, path: str) -> str | None:
    """Row-normalised confusion matrix of a run's ensemble (C <= 100), head to tail."""
    if run["confusion"] is None:
        return None
    confusion = np.asarray(run["confusion"], np.float64)
    order = head_to_tail(run["per_class"]["train_count"])
    confusion = confusion[np.ix_(order, order)]
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = min(12.0, 3 + 0.35 * len(order))
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot()
    image = ax.imshow(100 * normalised, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class's test images", shrink=0.8)
    if len(order) <= MAX_TICK_LABELS:
        names = [run["class_names"][c] for c in order]
        ax.set_xticks(range(len(order)), names, rotation=60, fontsize=7)
        ax.set_yticks(range(len(order)), names, fontsize=7)
        for i in range(len(order)):
            for j in range(len(order)):
                if confusion[i, j]:
                    ax.text(
                        j,
                        i,
                        int(confusion[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if normalised[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class (head to tail)")
    ax.set_ylabel("true class (head to tail)")
    ax.set_title(f"{run['label']}: ensemble confusion (counts in cells)")
    return save_figure(fig, path)


def per_class_image(correct: np.ndarray, totals: np.ndarray, info, config) -> np.ndarray:
    """The per-class top-1 plot of one evaluation as a uint8 image [1, H, W, 3] for a
    TensorBoard image summary. correct [K + 1, C] (experts, then ensemble), totals [C]."""

    correct, totals = np.asarray(correct, np.float64), np.asarray(totals, np.float64)
    num_experts = correct.shape[0] - 1
    top1 = lambda row: [100 * c / t if t > 0 else None for c, t in zip(row, totals, strict=True)]
    run = {
        "label": "this run",
        "num_experts": num_experts,
        "class_names": class_names_of(info),
        "per_class": {
            "train_count": [int(n) for n in info.class_counts],
            "top1": {
                "ensemble": top1(correct[-1]),
                **{f"expert_{k}": top1(correct[k]) for k in range(num_experts)},
            },
        },
    }
    ensemble = accuracy_summary(correct, totals, info.group_masks(config.group_rule))["ensemble"]
    groups = ", ".join(
        f"{g} {ensemble[g]:.1f}" if ensemble[g] is not None else f"{g} n/a" for g in GROUPS
    )
    fig = new_figure(8, 3.6)
    ax = fig.add_subplot()
    _draw_per_class(ax, [run])
    ax.set_title(
        f"ensemble top-1 {ensemble['top1']:.2f}: {groups} ({config.group_rule} rule)", fontsize=9
    )
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[None, ..., :3].copy()


def class_names_of(info) -> list[str]:
    """The dataset's class names where known, else class_<i>."""
    names = getattr(info, "class_names", None)
    if names and len(names) == info.num_classes:
        return list(names)
    return [f"class_{i}" for i in range(info.num_classes)]


def save_figure(fig, path: str) -> str:
    fig.savefig(path)
    return path


# The figures of a set of runs, by file name (confusion_<label>.png come on top, per run).
FIGURES = {
    "per_class_top1.png": plot_per_class,
    "group_top1.png": plot_groups,
    "fig1_kl_per_class.png": plot_kl_per_class,  # needs K >= 2 or two seeds of a recipe
    "fig5a_hardest_negative.png": plot_hardest_negative,
    "fig5b_kl_groups.png": plot_kl_groups,  # likewise
    "reliability.png": plot_reliability,
    "test_distributions.png": plot_test_distributions,  # with --test_distributions
}


def plot_all(analysis: dict, out_dir: str) -> list[str]:
    """Every figure of `analysis` into out_dir; returns the paths written."""
    written = [draw(analysis, os.path.join(out_dir, name)) for name, draw in FIGURES.items()]
    for run in analysis["runs"]:
        written.append(plot_confusion(run, os.path.join(out_dir, f"confusion_{run['label']}.png")))
    return [p for p in written if p is not None]
