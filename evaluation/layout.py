"""Where a run keeps its files, named in one place: checkpoints, the robustness record beside a checkpoint, the
saved config and CSV logs under csv/version_*, a study step's result.json, and a study's step folders.

Runs, sweeps, studies and bench ask these objects for paths; none of them joins "checkpoints" or "last.ckpt" itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
RESULT = "result.json"  # a study step's summary of its finished run (studies.runner)
REPORT_SUFFIX = ".robustness.json"
DEFAULT_REPORT = "robustness.json"  # the record of a test run without a checkpoint, in the run folder


def report_beside(checkpoint) -> Path:
    """The result record written beside a checkpoint: `best.ckpt` -> `best.robustness.json`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}{REPORT_SUFFIX}")


def _version(path: Path) -> int:
    """The number of a csv/version_N folder (-1 when it has none), for ordering resumed runs' logs."""
    number = path.parent.name.rsplit("_", 1)[-1]
    return int(number) if number.isdigit() else -1


@dataclass(frozen=True)
class RunLayout:
    """One `train.py` run folder: `checkpoints/` (with `last.ckpt`), `csv/version_*/{config.yaml,metrics.csv}`
    (a resumed run logs to a new version), and for a study step `result.json`."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_checkpoint(cls, checkpoint) -> "RunLayout":
        """The run folder a checkpoint was saved in (RUN/checkpoints/NAME.ckpt)."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    @property
    def result(self) -> Path:
        return self.root / RESULT

    @property
    def default_report(self) -> Path:
        return self.root / DEFAULT_REPORT

    def configs(self) -> list[Path]:
        """Every saved config.yaml, oldest version first."""
        return sorted(self.root.glob("csv/version_*/config.yaml"), key=_version)

    def config_file(self) -> Optional[Path]:
        """The newest version's config.yaml (None when the run saved none)."""
        configs = self.configs()
        return configs[-1] if configs else None

    def metrics_logs(self) -> list[Path]:
        """Every CSV log, oldest version first."""
        return sorted(self.root.glob("csv/version_*/metrics.csv"), key=_version)

    def locate_checkpoint(self, recorded) -> Optional[Path]:
        """A checkpoint recorded by path: that file, or the file of that name in this run's checkpoints folder
        (the run folder was moved); None when neither exists."""
        if not recorded:
            return None
        for candidate in (Path(recorded), self.checkpoints / Path(recorded).name):
            if candidate.is_file():
                return candidate
        return None


CONSTRUCTED_PREFIX = "train_"


@dataclass(frozen=True)
class StepLayout:
    """A study's step folders: `OUT/{flag}_{size}/seed_{seed}/{name}`, where a model trained on a constructed set
    `c` is the step `train_c` and the constructed sets themselves live in `.../constructed/`."""

    out: Path

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))

    @staticmethod
    def seed_part(flag: str, size: int, seed: int) -> Path:
        return Path(f"{flag}_{size}") / f"seed_{seed}"

    def seed_dir(self, flag: str, size: int, seed: int) -> Path:
        return self.out / self.seed_part(flag, size, seed)

    def step(self, flag: str, size: int, seed: int, name: str) -> Path:
        return self.seed_dir(flag, size, seed) / name

    def constructed(self, flag: str, size: int, seed: int, name: str) -> Path:
        """The constructed training set `name` (an npz with its JSON sidecar beside it)."""
        return self.seed_dir(flag, size, seed) / "constructed" / f"{name}.npz"

    @staticmethod
    def trained_on(construction: str) -> str:
        """The step name of the model trained on a constructed set."""
        return f"{CONSTRUCTED_PREFIX}{construction}"

    @classmethod
    def label(cls, flag: str, size: int, seed: int, name: str) -> str:
        """`pneumoniamnist_28/seed_0/erm`: a step named relative to the study's folder."""
        return (cls.seed_part(flag, size, seed) / name).as_posix()
