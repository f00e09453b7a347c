import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# No telemetry from any tool during tests, and no test writes to the developer's own stores.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (`-n 2`, the default addopts) each worker gets its share of the cores, so
# two workers' torch and its subprocesses do not oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# The modules that dominate the suite, longest first (worker-seconds measured with two workers
# on 2 cores: reliability ~720, dataset_stages ~600, operations ~400, search_e2e ~380, stages
# ~320, orchestration ~310, engine ~150, cli ~120; the rest ~200 together). Each module runs
# whole on one worker (its module-scoped pipeline is built once); handing the longest out first
# keeps the two workers' shares even.
LONGEST_FIRST = [
    "test_reliability.py", "test_dataset_stages.py", "test_operations.py", "test_search_e2e.py",
    "test_stages.py", "test_orchestration.py", "test_engine.py", "test_cli.py",
]


def pytest_collection_modifyitems(config, items):
    """The modules in LONGEST_FIRST order, then the rest as collected. pytest-xdist hands out
    whole modules (--dist loadfile) in this order (--no-loadscope-reorder)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order


# A few seconds per stage on 2 cores: small frames, few identities, short tracklets.
TINY_PARAMS = {
    "synthetic": {
        "num_train_ids": 8, "num_test_ids": 8, "min_len": 4, "max_len": 12, "height": 64,
        "width": 32, "num_distractor_tracklets": 3, "num_junk_tracklets": 2, "num_distractor_ids": 2,
    },
    "model": {"backbone": "resnet18", "seq_len": 4, "height": 64, "width": 32},
    "cache": {"num_workers": 0},
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test starts from the same os.environ: mlflow.set_tracking_uri() writes
    MLFLOW_TRACKING_URI into it, which every later subprocess of that worker would inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real Prefect server for the session, so each flow does not boot a temporary one."""
    from pipeline.servers import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


class Workspace:
    """A scratch project directory: params.yaml + dvc.yaml, running `python -m pipeline`."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.env = env

    def write_params(self, override: dict) -> None:
        base = yaml.safe_load((REPO / "params.yaml").read_text())
        (self.path / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, TINY_PARAMS), override)))

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], cwd=self.path, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pipeline {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc


@pytest.fixture
def workspace(tmp_path, prefect_api) -> Workspace:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    env.pop("PSTA_PARENT_RUN_ID", None)
    ws = Workspace(tmp_path, env)
    ws.write_params({})
    return ws
