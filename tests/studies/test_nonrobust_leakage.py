"""Robust-feature leakage (studies.nonrobust.leakage): the leakage model reads the new label on the constructed
images and on the original ones they were built from, and D_det net of leakage takes off only what the perturbation
added (D_det's labels are a function of the originals, so its no-leakage AUROC is not 0.5)."""
import json

import numpy as np
import pytest

from studies.nonrobust.leakage import NET, audit, net_of_leakage


def _constructed(tmp_path, official, images, labels, kind="d_det"):
    """A constructed npz and its sidecar (the keys the audit reads) over the official file's first images."""
    npz = tmp_path / f"{kind}.npz"
    np.savez(npz, train_images=images, train_labels=labels.reshape(-1, 1).astype(np.uint8))
    (tmp_path / f"{kind}.json").write_text(json.dumps({"flag": "breastmnist", "kind": kind,
                                                       "official_file": str(official)}))
    return npz


def test_the_audit_reads_the_new_label_on_the_constructed_and_on_the_original_images(tiny_erm, tmp_path):
    """D_det sets on the tiny ERM's synthetic BreastMNIST, the ERM model standing in for the leakage model: with the
    original images untouched the two AUROCs agree (nothing leaked); with every image replaced by an image of its new
    class (the new label's visible features drawn in full) only the constructed one rises."""
    official = tiny_erm.root / "breastmnist.npz"
    with np.load(official) as data:
        images, y = data["train_images"][:128], data["train_labels"][:128, 0].astype(np.int64)
    new = 1 - y
    untouched = audit(_constructed(tmp_path, official, images, new), tiny_erm.checkpoint, tiny_erm.checkpoint)
    assert untouched["leakage_auroc"] == pytest.approx(untouched["leakage_auroc_original"])
    assert untouched["leakage_auroc_original"] < 0.3  # the model reads y, the opposite of the new label
    donors = [np.flatnonzero(y == c)[0] for c in (0, 1)]
    swapped = images[[donors[c] for c in new]]
    leaked = audit(_constructed(tmp_path, official, swapped, new), tiny_erm.checkpoint, tiny_erm.checkpoint)
    assert leaked["leakage_auroc_original"] == pytest.approx(untouched["leakage_auroc_original"])
    assert leaked["leakage_auroc"] > leaked["leakage_auroc_original"] + 0.3


def _measured():
    return {"measures": {"auroc": {"value": 0.8, "draws": np.array([0.7, 0.9])}}}


@pytest.mark.parametrize("kind, audit_result, net", [
    ("d_rand", {"leakage_auroc": 0.6, "leakage_auroc_original": 0.3}, 0.7),   # D_rand: 0.5 is its no-leakage value
    ("d_det", {"leakage_auroc": 0.6, "leakage_auroc_original": 0.3}, 0.5),    # D_det: the original images' value
    ("d_det", {"leakage_auroc": 0.6}, None),                                  # an audit without it: no net measure
    ("d_rand", {}, None),
])
def test_net_of_leakage_takes_off_the_excess_over_the_sets_own_no_leakage_value(kind, audit_result, net):
    got = net_of_leakage(_measured(), audit_result, kind)["measures"].get(NET)
    if net is None:
        assert got is None
    else:
        assert got["value"] == pytest.approx(net) and got["draws"] == pytest.approx([net - 0.1, net + 0.1])
