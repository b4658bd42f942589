"""Known third-party noise, filtered in one place, so a user sees a traceback only when something failed."""
from __future__ import annotations

import logging
import warnings

#: warning messages (regular expressions) that say nothing to a medrobust user
NOISE = (
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*litlogger.*",
    r".*does not have many workers.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # torch's pytree, called by Lightning
)


def quiet_third_party() -> None:
    """Silence the known, harmless warnings and tips of Lightning and friends (idempotent)."""
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(lightning|torchmetrics|optuna).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_tips)


def _drop_tips(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage() and "💡 Tip" not in record.getMessage()
