"""Independent re-computation of the nonrobust-features study's measures from its saved checkpoints.

`python -m studies reproduce CONFIG --out DIR` writes DIR/results.csv (one row per dataset, seed and model) with
per-model measures on the real test split. This script recomputes them without the study's code: it loads each
row's best checkpoint (DIR/<flag>_<size>/seed_<s>/<model> for models trained on the real split,
.../train_<name> for models trained on a constructed set; the checkpoint named by the step's result.json) with the
project's loader (evaluation.checkpoints.load_module: the model is under test only through its outputs), reads
the real val and test images straight from the official npz with numpy (uint8 / 255, NCHW: the models' pixel
contract; normalisation is inside the model), takes probabilities from the model's logits, and scores them with
scikit-learn (`balanced_accuracy_score`, `roc_auc_score`). Neither studies.measures, lightning_modules.metrics
nor torchmetrics computes any number here.

Definitions (those of studies/measures.py's docstring, implemented afresh):

- `bacc`: balanced accuracy (mean recall over the classes present in the targets) of the argmax;
  `clean_bacc` (the robustness report's test score) is compared with the same number.
- `auroc`: AUROC of the class-1 probability for binary heads; the mean over classes of the one-vs-rest AUROC for
  multi-class heads (sklearn's `multi_class="ovr"`, macro); the mean over labels for multi-label heads.
- `bacc_recal` (binary heads): a threshold t on the log-odds s = z1 - z0 (predict 1 iff s > t) chosen on the real
  validation split to maximise its balanced accuracy, then applied to test. Candidates: every midpoint between
  consecutive distinct validation scores, one below the lowest and one above the highest, and t = 0 (the default
  rule). Ties in validation bacc: t = 0 when it is among the best (recalibration that does not help on validation
  does not move the rule), else the best candidate with the smallest |t|. Where several validation intervals tie
  for the best, the study (which searches the same points on log-probabilities) may pick another one and classify a
  few test images otherwise: hence its own, larger `--recal-tolerance`. (This check found the study thinning a
  binary search to 256 candidates and missing the optimum by 0.035 on a PneumoniaMNIST model; it now searches them
  all.) Multi-class heads: not recomputed (the
  study fits one bias per class by coordinate ascent, a local search without a unique optimum to compare with);
  multi-label: not defined (the study says n/a too).
- `bacc_adabn`, `auroc_adabn`: a deep copy of the model whose BatchNorm layers have their running statistics reset,
  are put in train mode (every other layer stays in eval mode), fed the
  unlabeled real validation images under no_grad, then put back in eval mode and scored on test. By default the
  whole validation split goes through in one batch (`--adabn-batch 0`: the statistics of the validation set
  itself); with `--adabn-batch N` the batches' statistics are averaged weighted by batch size (for a split too
  large for one batch). "n/a: no BatchNorm" for models without BatchNorm.
- `bacc_vs_new_label` (D_det rows): balanced accuracy of the argmax against the D_det label (y + 1) mod C.

Each measure is compared with the row's point estimate in results.csv (the `_low` / `_high` interval columns are
kept in the JSON; the summary rows over seeds, seed `all`, are not models and are skipped). Exit 0: every
|independent - study| is within the tolerance; 1: one or more is not (the rows are named); 2: bad input (no out
folder, no results.csv, no row with a checkpoint, a missing npz).
"""
from __future__ import annotations

import copy
import csv
import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from bench.common import DEFAULT_ROOT, BenchError, Parser, environment, format_table, positive_int, run_main, write_json
from evaluation.layout import RunLayout, StepLayout

MEASURES = ("clean_bacc", "bacc", "auroc", "bacc_recal", "bacc_adabn", "auroc_adabn", "bacc_vs_new_label")
REQUIRED_COLUMNS = ("dataset", "size", "model", "kind", "seed")
NO_BATCHNORM = "n/a: no BatchNorm"


def nonnegative_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=(
        "Example: python bench/study_crosscheck.py --out runs/study/quick --rows d_rand d_det --json /tmp/check.json"))
    parser.add_argument("--out", required=True,
                        help="the study's out folder (python -m studies reproduce ... --out DIR)")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="folder with the datasets' official npz files "
                        "(default: ../shared/data/medmnist beside the repository)")
    parser.add_argument("--rows", nargs="+", metavar="NAME", help="only rows whose model, construction or kind "
                        "(real, constructed) is one of these (default: every row with a checkpoint)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest allowed |independent - study| (default: %(default)s)")
    parser.add_argument("--recal-tolerance", type=float, default=0.03,
                        help="the same for bacc_recal (threshold placement inside a tie; default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=512,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--adabn-batch", type=nonnegative_int, default=0, help="validation images per AdaBN batch; "
                        "0: the whole split at once (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", metavar="OUT", help="also write the comparison here (atomic write)")
    args = parser.parse_args(argv)
    if args.tolerance < 0 or args.recal_tolerance < 0:
        parser.error("--tolerance and --recal-tolerance must be >= 0")
    args.out = Path(args.out).expanduser()
    if not args.out.is_dir():
        raise BenchError(f"study out folder {args.out} not found")
    if not (args.out / "results.csv").is_file():
        raise BenchError(f"{args.out} has no results.csv: run python -m studies reproduce CONFIG --out {args.out} "
                         "first")
    args.root = Path(args.root).expanduser()
    return args


SUMMARY_SEED = "all"  # a results.csv row over every seed of a cell (studies.measures.summary_rows)


# ---- the study's rows and their checkpoints ----------------------------------------------------------------
def read_results(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise BenchError(f"{path} is not a readable CSV ({err})") from None
    if not rows:
        raise BenchError(f"{path} has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise BenchError(f"{path} is not a study's results.csv: it lacks the column(s) {', '.join(missing)}")
    return [r for r in rows if r["seed"] != SUMMARY_SEED]


def row_label(row: dict) -> str:
    return StepLayout.label(row["dataset"], row["size"], row["seed"], row["model"])


def step_dir(out: Path, row: dict) -> Path:
    """Where the study trained this row's model (evaluation.layout.StepLayout, the study's own layout)."""
    name = row["model"] if row["kind"] == "real" else StepLayout.trained_on(row["model"])
    return StepLayout(out).step(row["dataset"], row["size"], row["seed"], name)


def find_checkpoint(step: Path) -> tuple[Optional[Path], str]:
    """(the step's best checkpoint, '') or (None, why not): the best_checkpoint of the step's summary
    (studies.runner.done), also found in the step's checkpoints folder when the out folder was moved."""
    from studies.runner import done

    layout = RunLayout(step)
    summary = done(step)
    if summary is None:
        return None, f"no finished run in {step} ({layout.result.name})"
    recorded = summary.get("best_checkpoint")
    if not recorded:
        return None, f"{layout.result} names no best checkpoint"
    found = layout.locate_checkpoint(recorded)
    return (found, "") if found else (None, f"checkpoint {recorded} not found")


def run_data_config(step: Path) -> dict:
    """The `data:` section of the config LightningCLI saved for the run (newest version), {} when absent."""
    import yaml

    from core.errors import ConfigError
    from evaluation.runs import run_config

    try:
        return dict(run_config(step).get("data") or {})
    except (ConfigError, OSError, yaml.YAMLError, AttributeError):
        return {}


def selected(row: dict, names: Optional[list[str]]) -> bool:
    return not names or bool({row["model"], row.get("construction") or "", row["kind"]} & set(names))


# ---- data straight from the npz ------------------------------------------------------------------------------
def npz_path(root: Path, flag: str, size: int) -> Path:
    from datamodules.info import npz_name

    return root / npz_name(flag, size)


def load_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'val': (images uint8 NHW[C], labels), 'test': ...} from an official MedMNIST npz."""
    if not path.is_file():
        raise BenchError(f"{path} not found (pass --root, the folder with the study's npz files)")
    try:
        with np.load(path) as npz:
            return {split: (npz[f"{split}_images"], npz[f"{split}_labels"]) for split in ("val", "test")}
    except (OSError, ValueError, KeyError) as err:
        raise BenchError(f"{path} is not a MedMNIST npz with val and test splits ({err})") from None


def to_model_input(images: np.ndarray, in_channels: int) -> np.ndarray:
    """uint8 N x H x W (grey) or N x H x W x 3 to float32 N x C x H x W in [0, 1]; grey repeated for RGB models."""
    x = images.astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    if x.shape[1] == 1 and in_channels == 3:
        x = np.repeat(x, 3, axis=1)
    if x.shape[1] != in_channels:
        raise BenchError(f"the model takes {in_channels} channels but the images have {x.shape[1]}")
    return np.ascontiguousarray(x)


# ---- the model's outputs --------------------------------------------------------------------------------------
def logits_of(model, x: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Logits (float64, N x C) of the model as it is (eval or not), batch by batch, no gradients."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[start:start + batch_size]).to(device)).double().cpu().numpy())
    return np.concatenate(out)


def to_probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def batchnorm_layers(model) -> list:
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapted_copy(model, x_val: np.ndarray, batch_size: int, device):
    """AdaBN: a copy whose BatchNorm statistics are re-estimated on x_val (labels never seen); None without
    BatchNorm. batch_size 0: the whole split in one batch."""
    import torch

    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        return None
    for layer in layers:
        layer.reset_running_stats()
        layer.train()
    step = batch_size or len(x_val)
    with torch.no_grad():
        for start in range(0, len(x_val), step):
            batch = x_val[start:start + step]
            for layer in layers:  # exponential update with factor n_batch / n_seen: the size-weighted mean
                layer.momentum = len(batch) / (start + len(batch))
            adapted(torch.from_numpy(batch).to(device))
    return adapted.eval()


# ---- scores (scikit-learn) ------------------------------------------------------------------------------------
def bacc(labels: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():  # a class predicted but absent from the targets: sklearn leaves it out, as wanted
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(labels, predictions))


def multilabel_bacc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean over labels of each label's balanced accuracy at p > 0.5."""
    return float(np.mean([bacc(labels[:, j], (probabilities[:, j] > 0.5).astype(int)) for j in range(labels.shape[1])]))


def auroc(labels: np.ndarray, probabilities: np.ndarray, task: str) -> float:
    """Binary: AUROC of p1. Multi-class: mean one-vs-rest AUROC over the classes present in the targets (sklearn's
    ovr macro when all are). Multi-label: mean over labels with both values present."""
    from sklearn.metrics import roc_auc_score

    if task == "multilabel":
        columns = [(labels[:, j], probabilities[:, j]) for j in range(labels.shape[1])]
    elif probabilities.shape[1] == 2:
        columns = [(labels, probabilities[:, 1])]
    else:
        columns = [(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])]
    scores = [roc_auc_score(y, p) for y, p in columns if 0 < np.sum(y) < len(y)]
    return float(np.mean(scores)) if scores else float("nan")


def fit_threshold(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """The threshold t on the validation log-odds (predict 1 iff s > t) that maximises validation balanced accuracy:
    t = 0 when it is among the best, else the best candidate closest to 0. None when validation lacks a class."""
    positives, negatives = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    if len(positives) == 0 or len(negatives) == 0:
        return None
    distinct = np.unique(scores)
    candidates = np.concatenate([[0.0, distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]])
    tpr = 1.0 - np.searchsorted(positives, candidates, side="right") / len(positives)  # share of s > t
    tnr = np.searchsorted(negatives, candidates, side="right") / len(negatives)  # share of s <= t
    value = (tpr + tnr) / 2
    best = value.max()
    if value[0] >= best - 1e-12:
        return 0.0
    winners = candidates[value >= best - 1e-12]
    return float(winners[np.argmin(np.abs(winners))])


def independent_measures(model, data: dict, task: str, num_classes: int, construction: str, args, device) -> dict:
    """{measure: value or note} for one model on one dataset's real val and test splits."""
    multilabel = task == "multilabel"
    x_val, y_val = data["val"]
    x_test, y_test = data["test"]
    if not multilabel:
        y_val = y_val.reshape(len(y_val), -1)[:, 0].astype(int)
        y_test = y_test.reshape(len(y_test), -1)[:, 0].astype(int)
    z_test = logits_of(model, x_test, args.batch_size, device)
    p_test = to_probabilities(z_test, multilabel)

    def scored(p):
        if multilabel:
            return multilabel_bacc(y_test, p), auroc(y_test, p, task)
        return bacc(y_test, p.argmax(1)), auroc(y_test, p, task)

    out: dict = {}
    out["bacc"], out["auroc"] = scored(p_test)
    out["clean_bacc"] = out["bacc"]
    if multilabel:
        out["bacc_recal"] = "n/a: multi-label"
    elif num_classes != 2:
        out["bacc_recal"] = ("skipped: multi-class (the study's per-class bias is a coordinate ascent, "
                             "no unique optimum)")
    else:
        z_val = logits_of(model, x_val, args.batch_size, device)
        threshold = fit_threshold(z_val[:, 1] - z_val[:, 0], y_val)
        if threshold is None:
            out["bacc_recal"] = "skipped: the validation split lacks a class"
        else:
            out["bacc_recal"] = bacc(y_test, (z_test[:, 1] - z_test[:, 0] > threshold).astype(int))
            out["threshold"] = threshold
    adapted = adapted_copy(model, x_val, args.adabn_batch, device)
    if adapted is None:
        out["bacc_adabn"] = out["auroc_adabn"] = NO_BATCHNORM
    else:
        z_adapted = logits_of(adapted, x_test, args.batch_size, device)
        out["bacc_adabn"], out["auroc_adabn"] = scored(to_probabilities(z_adapted, multilabel))
    if construction == "d_det" and not multilabel:
        out["bacc_vs_new_label"] = bacc((y_test + 1) % num_classes, p_test.argmax(1))
    return out


# ---- comparison -----------------------------------------------------------------------------------------------
def study_value(row: dict, name: str):
    """The row's value of a measure: a float, a note (text), or None when results.csv has none."""
    text = (row.get(name) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def compare_measure(name: str, study, ours, args) -> dict:
    tolerance = args.recal_tolerance if name == "bacc_recal" else args.tolerance
    entry = {"measure": name, "study": study, "independent": ours, "difference": None, "tolerance": tolerance}
    if isinstance(ours, str) and not ours.startswith("n/a"):
        return {**entry, "status": ours, "ok": True}  # not recomputed here (the reason is the status)
    if study is None:
        return {**entry, "status": "not in results.csv", "ok": True}
    numbers = isinstance(study, float) and isinstance(ours, float)
    if numbers and math.isnan(study) and math.isnan(ours):
        return {**entry, "status": "ok (both nan)", "ok": True}
    if numbers:
        diff = ours - study
        ok = abs(diff) <= tolerance
        return {**entry, "difference": diff, "status": "ok" if ok else "DIFFERS", "ok": ok}
    if isinstance(study, str) and isinstance(ours, str):
        return {**entry, "status": "ok (n/a in both)", "ok": True}
    return {**entry, "status": "DIFFERS (a number in one, n/a in the other)", "ok": False}


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = read_results(args.out / "results.csv")
    chosen = [r for r in rows if selected(r, args.rows)]
    if not chosen:
        raise BenchError(f"no row of {args.out / 'results.csv'} matches --rows {' '.join(args.rows)} (models: "
                         f"{', '.join(dict.fromkeys(r['model'] for r in rows))})")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from datamodules.info import dataset_info
    from evaluation.checkpoints import load_module

    checked, skipped, datasets = [], [], {}
    for row in chosen:
        label = row_label(row)
        step = step_dir(args.out, row)
        ckpt, why = find_checkpoint(step)
        config = run_data_config(step) if ckpt else {}
        subsampled = [key for key in ("subsample_val", "subsample_test") if config.get(key) is not None]
        if ckpt and subsampled:
            ckpt, why = None, f"the run used {', '.join(subsampled)}: its val/test splits are not the npz's"
        if ckpt is None:
            skipped.append({"row": label, "why": why})
            print(f"{label}: skipped ({why})", flush=True)
            continue
        info = dataset_info(row["dataset"])
        size = int(row["size"])
        path = npz_path(args.root, info.flag, size)
        recorded_root = config.get("root")
        if recorded_root and npz_path(Path(recorded_root), info.flag, size).resolve() != path.resolve():
            print(f"note: {label} was trained with data root {recorded_root}; reading {path}")
        model = load_module(ckpt).to(device)
        in_channels = int(model.hparams.get("in_channels", info.n_channels))
        key = (str(path), in_channels)
        if key not in datasets:
            splits = load_splits(path)
            datasets[key] = {s: (to_model_input(images, in_channels), labels) for s, (images, labels) in splits.items()}
        construction = row.get("construction") or row["model"]
        ours = independent_measures(model, datasets[key], info.task, info.num_classes, construction, args, device)
        compared = []
        for name in MEASURES:
            if name not in ours:
                continue
            entry = compare_measure(name, study_value(row, name), ours[name], args)
            entry["study_interval"] = [study_value(row, f"{name}_low"), study_value(row, f"{name}_high")]
            compared.append(entry)
        checked.append({"row": label, "dataset": info.flag, "size": size, "seed": row["seed"], "model": row["model"],
                        "construction": construction, "checkpoint": str(ckpt), "threshold": ours.get("threshold"),
                        "measures": compared})
        print(f"{label}: {sum(m['difference'] is not None for m in compared)} measures compared", flush=True)
    if not checked:
        raise BenchError(f"no row of {args.out / 'results.csv'} has a checkpoint to recompute: "
                         + "; ".join(f"{s['row']}: {s['why']}" for s in skipped))

    def shown(value):
        return value if value is None or isinstance(value, float) else str(value)

    table = [[r["row"], m["measure"], shown(m["study"]),
              None if m["status"].startswith("skipped") else shown(m["independent"]), m["difference"], m["status"]]
             for r in checked for m in r["measures"]]
    print()
    print(format_table(["row", "measure", "study", "independent", "difference", "status"], table))
    print(f"difference = independent - study (results.csv point estimate); tolerance {args.tolerance} "
          f"({args.recal_tolerance} for bacc_recal)")
    failures = [(r["row"], m) for r in checked for m in r["measures"] if not m["ok"]]
    compared = sum(m["difference"] is not None for r in checked for m in r["measures"])
    if failures:
        for label, m in failures:
            detail = (f"by {m['difference']:+.4f}" if m["difference"] is not None
                      else f"({m['study']} vs {m['independent']})")
            print(f"FAIL: {label} {m['measure']}: the study's value differs from the independent one {detail}")
    else:
        print(f"PASS: {compared} numbers of {len(checked)} rows agree with the independent computation"
              + (f" ({len(skipped)} rows skipped)" if skipped else ""))
    write_json(args.json, {
        "benchmark": "study_crosscheck", "out": str(args.out), "root": str(args.root),
        "settings": {"tolerance": args.tolerance, "recal_tolerance": args.recal_tolerance, "rows": args.rows,
                     "batch_size": args.batch_size, "adabn_batch": args.adabn_batch, "device": str(device)},
        "rows": checked, "skipped": skipped, "compared": compared, "passed": not failures,
        "failures": [{"row": label, "measure": m["measure"], "difference": m["difference"]} for label, m in failures],
        "environment": environment(),
    })
    return 1 if failures else 0


if __name__ == "__main__":
    run_main(main)
