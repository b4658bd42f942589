"""The explanation study's figures: expl_scatter.png (explanation against classification robustness) and
expl_maps.png (clean and attacked saliency maps of a few test images)."""
from __future__ import annotations

from pathlib import Path

from attacks.threat_model import format_epsilon
from datamodules.info import dataset_info
from evaluation.plots import pyplot_agg, save_figure

from .config import Study

def scatter_figure(rows: list[dict], analysis: dict, out: Path) -> None:
    plt = pyplot_agg()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sel = [r for r in rows if r["dataset"] == dataset]
        for model in dict.fromkeys(r["model"] for r in sel):
            m = [r for r in sel if r["model"] == model]
            x, y = [r["robust_bacc"] for r in m], [r["expl_topk"] for r in m]
            noise = [r["expl_topk_random"] for r in m]
            marker = "*" if m[0]["training"].startswith("expl_reg") else "o"
            points = ax.scatter(x, y, s=90 if marker == "*" else 45, marker=marker, label=model, zorder=3)
            ax.scatter(x, noise, s=25, marker="x", color=points.get_facecolor()[0], alpha=0.6, zorder=2)
        c = analysis[dataset]["correlation"]
        ax.set_xlabel(f"classification robustness: robust bacc ({sel[0]['robust_attack']}, {sel[0]['epsilon']})")
        ax.set_ylabel(f"explanation robustness: top-k intersection ({sel[0]['epsilon']})")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{dataset}: r = {c['pearson']:+.2f} [{c['pearson_ci'][0]:+.2f}, {c['pearson_ci'][1]:+.2f}]",
                     fontsize=10)
        ax.legend(fontsize=7, title="o/*: attack, x: random noise", title_fontsize=7)
    save_figure(fig, out / "expl_scatter.png")


def maps_figure(rows: list[dict], study: Study, out: Path) -> None:
    """Clean and attacked saliency maps of `examples` test images for a non-robust, the most robust and the
    regularised model (first dataset, first seed)."""
    from attacks.explanation import TopKAttack
    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.tensors import fixed_subset, to_unit_range
    from evaluation.checkpoints import load_module
    from explanations import Explainer, topk_intersection

    first = [r for r in rows if r["dataset"] == rows[0]["dataset"] and r["seed"] == rows[0]["seed"]
             and r.get("best_checkpoint")]
    if not first:
        return
    chosen = [first[0]]
    robust = max(first, key=lambda r: r["robust_bacc"] or 0)
    for r in [robust, *[r for r in first if r["training"].startswith("expl_reg")]]:
        if r not in chosen:
            chosen.append(r)
    dataset = next(d for d in study.datasets if dataset_info(d["flag"]).flag == first[0]["dataset"])
    dm = MedMNISTDataModule(dataset["flag"], dataset.get("size", 28), root=dataset.get("root"),
                            verify_md5=dataset.get("verify_md5", True))
    split = dm.split("test")
    index = fixed_subset(len(split), study.examples, 0)
    x = to_unit_range(split.images[index])
    n = len(x)
    plt = pyplot_agg()
    fig, axes = plt.subplots(len(chosen), 1 + 2 * n, figsize=(1.7 * (1 + 2 * n), 1.9 * len(chosen)), squeeze=False)
    for row_axes, r in zip(axes, chosen):
        model = load_module(r["best_checkpoint"]).eval()
        explainer = Explainer(model, study.explanation["method"])
        clean = explainer(x)
        attack = TopKAttack(model, study.epsilon, steps=study.explanation["steps"], norm=study.norm,
                            k=study.explanation["k"])
        result = attack.run(x)
        attacked = explainer(result.x_adv)
        overlap = topk_intersection(clean, attacked, study.explanation["k"])
        row_axes[0].imshow(x[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        row_axes[0].set_ylabel(f"{r['model']}\nrobust bacc {r['robust_bacc']:.2f}", fontsize=7)
        for j in range(n):
            for col, (maps, title) in enumerate(((clean, "clean"), (attacked, "attacked"))):
                ax = row_axes[1 + 2 * j + col]
                ax.imshow(maps[j].numpy(), cmap="hot")
                label = f"img {j + 1} {title}" + (f"\ntop-k {float(overlap[j]):.2f}" if col else "")
                label += "" if col == 0 or bool(result.kept[j]) else " (label changed)"
                ax.set_title(label, fontsize=6)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{first[0]['dataset']}: {study.explanation['method']} maps, clean vs top-k attack at "
                 f"{format_epsilon(study.epsilon)} (first column: image 1)", fontsize=8)
    save_figure(fig, out / "expl_maps.png")
