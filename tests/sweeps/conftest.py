"""Sweep fixtures: a tiny synthetic sweep YAML (1-epoch PGD-AT on 64 synthetic BreastMNIST images) and a
throwaway PostgreSQL server on loopback."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

TRAINING = {
    "data.flag": "breastmnist",
    "data.verify_md5": False,
    "data.batch_size": 32,
    "trainer.max_epochs": 1,
    "trainer.enable_model_summary": False,
    "model.init_args.steps": 1,
    "model.init_args.warmup_epochs": 0,
    "trainer.callbacks.init_args.epsilons": ["4/255"],
    "trainer.callbacks.init_args.val_samples": 16,
    "trainer.callbacks.init_args.val_steps": 1,
    "trainer.callbacks.init_args.test_steps": 2,
    "trainer.callbacks.init_args.test_restarts": 1,
    "trainer.callbacks.init_args.autoattack": False,
    "trainer.callbacks.init_args.corruption_epoch": False,
    "trainer.callbacks.init_args.corruption_report": False,
}


@pytest.fixture
def tiny_sweep(tmp_path, synthetic_root):
    """A factory: tiny_sweep(**keys) writes a sweep YAML over synthetic data (overrides merged) and returns its path."""
    data = synthetic_root("breastmnist", n_train=64, n_val=32, n_test=32)

    def make(name: str = "tiny.yaml", overrides: dict | None = None, **keys) -> Path:
        sweep = {
            "study": "tiny",
            "storage": f"journal:{tmp_path / 'runs' / 'tiny.journal'}",
            "root": str(tmp_path / "runs"),
            "method": "pgd_at",
            "epsilon": [0, "4/255"],
            "seeds": [0],
            "objectives": {"val/clean_bacc": "maximize", "val/adv_bacc@4/255": "maximize"},
            "overrides": {"data.root": str(data), **TRAINING, **(overrides or {})},
            "heartbeat": {"interval": 1, "grace": 5},
            **keys,
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))  # objectives keep their order
        return path

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="session")
def postgres_url():
    """postgresql://... of a throwaway server (initdb + pg_ctl in a temporary folder, loopback, a free port),
    run as user `postgres` when the tests run as root (initdb refuses root). Skipped only without the binaries."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg[binary] is not installed")
    folder = Path(tempfile.mkdtemp(prefix="medrobust-pg-"))
    data, port = folder / "data", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"], check=True,
                   capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        import psycopg

        for _ in range(50):
            try:
                connection = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                             autocommit=True)
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        connection.execute("CREATE DATABASE sweeps")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/sweeps"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_database(postgres_url):
    """An empty database on the throwaway server for one test."""
    import psycopg

    name = f"t{time.time_ns()}"
    base = postgres_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/sweeps", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"
