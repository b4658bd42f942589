"""Independent check of a robustness report: attack its checkpoint with torchattacks' PGD.

Loads the checkpoint as its own model class (checked against the report's), rebuilds the test split the report scored,
runs torchattacks PGD (L-inf; PGDL2 for L2 reports) at every epsilon of the report with `--steps` steps and
`--restarts` random restarts (per example, any successful restart is kept) and compares balanced
accuracy. The reference is the report's lowest robust bacc on the whole test split (PGD, and AutoAttack
when it ran on every test example). Exit 0: torchattacks finds nothing more than `--tolerance` below
the reference at any epsilon; 1: it does (the report overstates robustness); 2: bad input or a
multi-label report (not supported).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import BenchError, Parser, environment, existing_dir, format_table, positive_int, run_main, write_json


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=(
        "Example: python bench/crosscheck.py --ckpt runs/erm/checkpoints/best-epoch=019.ckpt "
        "--root ../shared/data/medmnist --steps 100 --restarts 3"))
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of an ERM, PGDAT, TRADES or FGSMRS model")
    parser.add_argument("--root", required=True, type=existing_dir, help="folder with the dataset's official npz file")
    parser.add_argument("--report",
                        help="robustness report (default: <ckpt stem>.robustness.json beside the checkpoint)")
    parser.add_argument("--steps", type=positive_int, default=100, help="PGD steps (default: %(default)s)")
    parser.add_argument("--restarts", type=positive_int, default=3,
                        help="random restarts per example (default: %(default)s)")
    parser.add_argument("--alpha-factor", type=float, default=2.5,
                        help="step size = factor * eps / steps (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="allowed drop of bacc below the report's (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images attacked at once (default: %(default)s)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                        help="skip the MD5 check (custom or synthetic files)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random starts (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the comparison here (atomic write)")
    args = parser.parse_args(argv)
    if args.tolerance < 0 or args.alpha_factor <= 0:
        parser.error("--tolerance must be >= 0 and --alpha-factor > 0")
    ckpt = Path(args.ckpt).expanduser()
    if not ckpt.is_file():
        raise BenchError(f"checkpoint {ckpt} not found")
    args.ckpt = ckpt
    args.report = Path(args.report).expanduser() if args.report else ckpt.with_name(f"{ckpt.stem}.robustness.json")
    if not args.report.is_file():
        raise BenchError(f"report {args.report} not found (pass --report)")
    return args


def read_report(path: Path) -> dict:
    """The report's JSON, checked for the fields a crosscheck needs."""
    try:
        report = json.loads(path.read_text())
        for keys in (("model", "class"), ("dataset", "flag"), ("dataset", "size"), ("dataset", "task"),
                     ("dataset", "n_examples"), ("threat_model", "epsilons"), ("threat_model", "norm"), ("pgd",)):
            node = report
            for key in keys:
                node = node[key]
    except (OSError, ValueError) as err:
        raise BenchError(f"{path} is not a readable JSON report ({err})") from None
    except (KeyError, TypeError):
        raise BenchError(f"{path} is not a robustness report: it lacks {'.'.join(keys)}") from None
    return report


def check_hparams(report: dict, model) -> None:
    """Refuse a checkpoint whose hyperparameters differ from those the report recorded (another run's)."""
    def plain(value):  # as the report's JSON stores it (tuples become lists, objects strings)
        return json.loads(json.dumps(value, default=str))

    from lightning_modules.settings import flat_hparams  # grouped or flat (reports written before the grouping)

    recorded, current = flat_hparams(report["model"].get("hparams") or {}), flat_hparams(model.hparams)
    differ = [f"{key} {plain(current[key])!r} vs {plain(recorded[key])!r}"
              for key in sorted(set(recorded) & set(current))
              if plain(current[key]) != plain(recorded[key])]
    if differ:
        raise BenchError(f"the checkpoint is not the model the report scored: {'; '.join(differ)} "
                         "(checkpoint vs report)")


def load_test_split(report: dict, model, args):
    """The test split as the report saw it (grey images repeated to RGB when the model wants 3 channels)."""
    from datamodules.info import dataset_info
    from datamodules.medmnist import MedMNISTDataModule

    data = report["dataset"]
    in_channels = int(model.hparams.get("in_channels", dataset_info(data["flag"]).n_channels))
    as_rgb = in_channels == 3 and dataset_info(data["flag"]).n_channels == 1
    dm = MedMNISTDataModule(data["flag"], data["size"], root=args.root, verify_md5=args.verify_md5, as_rgb=as_rgb)
    test = dm.split("test")
    if len(test) != data["n_examples"]:
        raise BenchError(f"the report scored {data['n_examples']} test examples but {args.root} has {len(test)} "
                         "(a subsampled or different test split): the numbers would not be comparable")
    return dm, test


def make_attack(model, norm: str, eps: float, args):
    import torchattacks

    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    return cls(model, eps=eps, alpha=args.alpha_factor * eps / args.steps, steps=args.steps, random_start=True)


def restarted(model, attack, restarts: int):
    """torchattacks' `attack` as an evaluation.scoring attack with `restarts` random restarts: per example, the
    first restart that fools the model (the last restart's image if none does)."""
    import torch

    def run(x, y):
        kept, fooled = None, torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for _ in range(restarts):
            x_adv = attack(x, y)
            with torch.no_grad():
                wrong = model(x_adv).argmax(1) != y
            if kept is None:
                kept = x_adv
            else:
                kept[~fooled] = x_adv[~fooled]  # fooled examples keep their success; the rest take this restart
            fooled |= wrong
            if fooled.all():
                break
        return kept

    return run


def compare(report: dict, model, test, args) -> tuple[dict, list[dict]]:
    """Clean scores and, per epsilon, the report's robust bacc beside torchattacks'."""
    import torch

    from attacks.threat_model import epsilon_label, format_epsilon
    from evaluation.scoring import evaluate

    task, num_classes = report["dataset"]["task"], int(model.hparams.num_classes)
    norm = report["threat_model"]["norm"]
    clean = evaluate(model, test.images, test.targets, task, num_classes, batch_size=args.batch_size, progress="clean")
    rows = []
    for eps in report["threat_model"]["epsilons"]:
        label = epsilon_label(eps)
        pgd = report["pgd"].get(label, {}).get("bacc")
        aa_entry = (report.get("autoattack") or {}).get(label)
        aa = aa_entry.get("bacc") if aa_entry else None
        aa_n = (aa_entry.get("info") or {}).get("n_examples") if aa_entry else None
        aa_full = aa is not None and aa_n == report["dataset"]["n_examples"]
        candidates = [v for v in (pgd, aa if aa_full else None) if v is not None]
        reference = min(candidates) if candidates else None
        torch.manual_seed(args.seed)
        attack = restarted(model, make_attack(model, norm, eps, args), args.restarts)
        ours = evaluate(model, test.images, test.targets, task, num_classes, attack=attack, batch_size=args.batch_size,
                        progress=f"torchattacks PGD-{args.steps}x{args.restarts} eps={format_epsilon(eps)}")
        diff = None if reference is None else ours["bacc"] - reference
        rows.append({
            "epsilon": eps, "label": label, "report_pgd_bacc": pgd, "report_autoattack_bacc": aa,
            "report_autoattack_n": aa_n, "reference_bacc": reference, "torchattacks": ours, "difference": diff,
            "ok": diff is None or diff >= -args.tolerance,
        })
        print(f"eps={format_epsilon(eps)}: torchattacks bacc {ours['bacc']:.4f}, report reference "
              f"{'-' if reference is None else f'{reference:.4f}'}", flush=True)
    return clean, rows


def main(argv=None) -> int:
    args = parse_args(argv)
    report = read_report(args.report)
    if report["dataset"]["task"] == "multilabel":
        print(f"error: multi-label reports ({report['dataset']['flag']}) are not supported: torchattacks' PGD "
              "and its success test are single-label", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from evaluation.checkpoints import load_module

    data = report["dataset"]
    expect = {"model_class": report["model"]["class"], "flag": data["flag"], "task": data["task"]}
    model = load_module(args.ckpt, expect).to(device)
    check_hparams(report, model)
    dm, test = load_test_split(report, model, args)
    recorded = report.get("checkpoint")
    if recorded and Path(recorded).resolve() != args.ckpt.resolve():
        print(f"note: the report was written for {recorded}", file=sys.stderr)
    print(f"{report['model']['class']} from {args.ckpt} on {dm.flag} {dm.size} px test ({len(test)} images), "
          f"{report['threat_model']['norm']} PGD-{args.steps} x {args.restarts} restarts (torchattacks), "
          f"tolerance {args.tolerance}", flush=True)

    clean, rows = compare(report, model, test, args)
    report_clean = (report.get("clean") or {}).get("bacc")
    print()
    print(f"clean bacc: report {'-' if report_clean is None else f'{report_clean:.4f}'}, here {clean['bacc']:.4f}")
    if report_clean is not None and abs(report_clean - clean["bacc"]) > 1e-3:
        print("WARNING: clean bacc differs from the report's: the checkpoint or the data are not the ones it scored",
              file=sys.stderr)
    table = [[r["label"], r["report_pgd_bacc"],
              None if r["report_autoattack_bacc"] is None
              else f"{r['report_autoattack_bacc']:.4f} (n={r['report_autoattack_n']})",
              r["torchattacks"]["bacc"], r["difference"], "ok" if r["ok"] else "LOWER"] for r in rows]
    print(format_table(["epsilon", "report PGD bacc", "report AutoAttack bacc", "torchattacks bacc", "difference",
                        "status"], table))
    print("difference = torchattacks bacc - the report's lowest full-test-split robust bacc (PGD; AutoAttack "
          "too when it ran on every test example). LOWER: more than the tolerance below the report.")
    passed = all(r["ok"] for r in rows)
    print("PASS: the report's robust accuracy holds up" if passed else
          f"FAIL: torchattacks finds robust bacc more than {args.tolerance} below the report")
    write_json(args.json, {
        "benchmark": "crosscheck", "checkpoint": str(args.ckpt), "report": str(args.report),
        "model_class": report["model"]["class"], "dataset": report["dataset"], "norm": report["threat_model"]["norm"],
        "settings": {"steps": args.steps, "restarts": args.restarts, "alpha_factor": args.alpha_factor,
                     "tolerance": args.tolerance, "seed": args.seed, "batch_size": args.batch_size,
                     "device": str(device)},
        "clean": {"report_bacc": report_clean, **clean}, "epsilons": rows, "passed": passed,
        "environment": environment(),
    })
    return 0 if passed else 1


if __name__ == "__main__":
    run_main(main)
