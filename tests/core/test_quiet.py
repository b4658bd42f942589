"""core.quiet drops the known third-party noise (and only it)."""
from __future__ import annotations

import logging
import warnings

from core.quiet import quiet_third_party


def test_known_warnings_are_dropped_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        quiet_third_party()  # idempotent
        warnings.warn("LightningCLI's args parameter is intended to run from within Python like if it were from "
                      "the command line.", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("an old API", DeprecationWarning)
        warnings.warn("epsilon looks like pixels, not [0, 1] units", UserWarning)  # a real one stays
    assert [str(w.message) for w in caught] == ["epsilon looks like pixels, not [0, 1] units"]


def test_lightning_tips_are_dropped_and_its_other_info_kept(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    quiet_third_party()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert [r.getMessage() for r in caplog.records] == ["`Trainer.fit` stopped: `max_epochs=1` reached."]
