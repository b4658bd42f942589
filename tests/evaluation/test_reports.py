import json

from core.files import write_json_atomic
from evaluation.record import ResultRecord, merge_record


def merge_report(path, report: dict) -> dict:
    """A new report merged into the record at `path` (evaluation.record's merge), as JSON."""
    return merge_record(path, ResultRecord.from_dict(report)).to_dict()


def _table(mean_bacc):
    """A MedMNIST-C table (CorruptionScores.to_dict()) with one corruption."""
    return {"flag": "breastmnist", "protocol": "native224", "size": 28, "severities": [3], "clean_bacc": 0.9,
            "roundtrip_bacc": None, "rbe_reference": "clean", "bacc": {"pixelate": [mean_bacc]},
            "corruption_bacc": {"pixelate": mean_bacc}, "be": {"pixelate": 1.0}, "rbe": {"pixelate": 1.0},
            "mean_bacc": mean_bacc, "mean_be": 1.0, "mean_rbe": 1.0, "confidence": None}


def _report(ckpt, pgd=None, corruptions=None, autoattack=None):
    pgd = pgd or {}
    report = {"checkpoint": ckpt, "clean": {"bacc": 0.9}, "pgd": pgd, "autoattack": autoattack or {},
              "threat_model": {"norm": "linf", "epsilons": [e["epsilon"] for e in pgd.values()],
                               "epsilon_labels": list(pgd)}}
    if corruptions:
        report["corruptions"] = corruptions
    return report


def test_a_later_corruption_only_run_keeps_the_attacks(tmp_path):
    path = tmp_path / "best.robustness.json"
    write_json_atomic(path, _report("best.ckpt", pgd={"4_255": {"epsilon": 4 / 255, "bacc": 0.3}}))
    merged = merge_report(path, _report("best.ckpt", corruptions=_table(0.7)))
    assert merged["pgd"]["4_255"]["bacc"] == 0.3 and merged["corruptions"]["mean_bacc"] == 0.7
    assert merged["threat_model"]["epsilon_labels"] == ["4_255"]


def test_new_epsilons_are_added_and_remeasured_ones_replaced(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, _report("c", pgd={"8_255": {"epsilon": 8 / 255, "bacc": 0.1},
                                              "1_255": {"epsilon": 1 / 255, "bacc": 0.8}}))
    merged = merge_report(path, _report("c", pgd={"1_255": {"epsilon": 1 / 255, "bacc": 0.7},
                                                  "4_255": {"epsilon": 4 / 255, "bacc": 0.5}}))
    assert {k: v["bacc"] for k, v in merged["pgd"].items()} == {"8_255": 0.1, "1_255": 0.7, "4_255": 0.5}
    assert merged["threat_model"]["epsilon_labels"] == ["1_255", "4_255", "8_255"]


def _autoattack(epsilon, bacc, ran):
    return {"epsilon": epsilon, "bacc": bacc, "info": {"planned": ["apgd-ce", "square"], "attacks": [
        {"name": name, "n_attacked": 16} for name in ran],
        "skipped": [n for n in ("apgd-ce", "square") if n not in ran]}}


def test_a_retest_keeps_the_autoattack_entries_of_other_epsilons_and_replaces_remeasured_ones(tmp_path):
    path = tmp_path / "best.robustness.json"
    first = {"1_255": _autoattack(1 / 255, 0.8, ["apgd-ce", "square"]), "2_255": _autoattack(2 / 255, 0.6, ["apgd-ce"])}
    second = {"2_255": _autoattack(2 / 255, 0.5, ["apgd-ce", "square"]),
              "8_255": _autoattack(8 / 255, 0.0, ["apgd-ce"])}

    def pgd(entries):
        return {label: {"epsilon": entry["epsilon"], "bacc": 0.9} for label, entry in entries.items()}

    write_json_atomic(path, _report("best.ckpt", pgd=pgd(first), autoattack=first))
    merged = merge_report(path, _report("best.ckpt", pgd=pgd(second), autoattack=second))
    assert merged["autoattack"] == {"1_255": first["1_255"], "2_255": second["2_255"], "8_255": second["8_255"]}
    assert [a["name"] for a in merged["autoattack"]["1_255"]["info"]["attacks"]] == ["apgd-ce", "square"]
    assert merged["autoattack"]["8_255"]["info"]["skipped"] == ["square"]
    assert merged["threat_model"]["epsilon_labels"] == ["1_255", "2_255", "8_255"]


def test_other_checkpoint_or_unreadable_report_is_replaced(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, _report("a", pgd={"8_255": {"epsilon": 8 / 255, "bacc": 0.1}}))
    assert merge_report(path, _report("b"))["pgd"] == {}
    path.write_text("{half a report")
    assert merge_report(path, _report("a"))["pgd"] == {}
    assert json.loads(write_json_atomic(path, {"x": 1}).read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
