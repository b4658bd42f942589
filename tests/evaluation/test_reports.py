import json

from core.files import write_json_atomic
from evaluation.reports import merge_report


def _report(ckpt, pgd=None, corruptions=None):
    pgd = pgd or {}
    report = {"checkpoint": ckpt, "clean": {"bacc": 0.9}, "pgd": pgd, "autoattack": {},
              "threat_model": {"norm": "linf", "epsilons": [e["epsilon"] for e in pgd.values()],
                               "epsilon_labels": list(pgd)}}
    if corruptions:
        report["corruptions"] = corruptions
    return report


def test_a_later_corruption_only_run_keeps_the_attacks(tmp_path):
    path = tmp_path / "best.robustness.json"
    write_json_atomic(path, _report("best.ckpt", pgd={"4/255": {"epsilon": 4 / 255, "bacc": 0.3}}))
    merged = merge_report(path, _report("best.ckpt", corruptions={"mean_bacc": 0.7}))
    assert merged["pgd"]["4/255"]["bacc"] == 0.3 and merged["corruptions"]["mean_bacc"] == 0.7
    assert merged["threat_model"]["epsilon_labels"] == ["4/255"]


def test_new_epsilons_are_added_and_remeasured_ones_replaced(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, _report("c", pgd={"8/255": {"epsilon": 8 / 255, "bacc": 0.1},
                                              "1/255": {"epsilon": 1 / 255, "bacc": 0.8}}))
    merged = merge_report(path, _report("c", pgd={"1/255": {"epsilon": 1 / 255, "bacc": 0.7},
                                                  "4/255": {"epsilon": 4 / 255, "bacc": 0.5}}))
    assert {k: v["bacc"] for k, v in merged["pgd"].items()} == {"8/255": 0.1, "1/255": 0.7, "4/255": 0.5}
    assert merged["threat_model"]["epsilon_labels"] == ["1/255", "4/255", "8/255"]


def test_other_checkpoint_or_unreadable_report_is_replaced(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, _report("a", pgd={"8/255": {"epsilon": 8 / 255, "bacc": 0.1}}))
    assert merge_report(path, _report("b"))["pgd"] == {}
    path.write_text("{half a report")
    assert merge_report(path, _report("a"))["pgd"] == {}
    assert json.loads(write_json_atomic(path, {"x": 1}).read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
