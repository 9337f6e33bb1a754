"""--executor ray against a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster, in a
process of its own): the points run on both nodes from the shipped packages and give the local
executor's summaries byte for byte; an address without a cluster, a silent port and a refused token
each end in one line and exit 2 within 30 s."""
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from simulator.studies import sweep  # noqa: E402
from tests.test_cli import ROOT, write_scenario  # noqa: E402

SETS = ("--set", "parallel.ep_size=2,3,4,8")  # 3 does not divide 8 GPUs: invalid on either executor
TOKEN = f"epsim-test-{secrets.token_hex(16)}"
TOKEN_AUTH = tuple(int(p) for p in ray.__version__.split(".")[:2]) >= (2, 52)  # Ray docs: token auth from 2.52.0


def ray_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    if TOKEN_AUTH:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    env.update(extra)
    return env


def run_cli(*args, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "run_sim.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - t0


@pytest.fixture(scope="module")
def cluster_address(tmp_path_factory):
    """A head and a second node, 1 CPU each, with token authentication where Ray has it."""
    log = tmp_path_factory.mktemp("ray") / "cluster.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ray_local_cluster.py")), "2"],
                                cwd=ROOT, env=ray_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        address = proc.stdout.readline().strip() if ready else ""
        if not address:
            pytest.fail(f"the local Ray cluster did not start: {log.read_text()[-2000:]}")
        yield address
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summaries(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (out / "points").glob("*/summary.json")}


def test_a_sweep_on_a_two_node_cluster_runs_on_both_nodes_and_matches_the_local_executor(tmp_path, cluster_address):
    scenario = write_scenario(tmp_path)
    proc, _ = run_cli("sweep", scenario, *SETS, "--executor", "ray", "--address", cluster_address,
                      "--out", tmp_path / "ray", env=ray_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, axes = sweep.parse_sweep_sets(list(SETS[1:]))
    sweep.run_sweep(sweep.expand_grid(scenario, [], axes), tmp_path / "local", "local", 1)

    on_ray, local = summaries(tmp_path / "ray"), summaries(tmp_path / "local")
    assert len(local) == 3 and on_ray == local  # same folders (same keys), same bytes
    records = [json.loads(p.read_text()) for p in (tmp_path / "ray" / "points").glob("*/point.json")]
    assert sorted(r["status"] for r in records) == ["invalid", "ok", "ok", "ok"]
    assert len({r["ray_node_id"] for r in records}) == 2
    assert (tmp_path / "ray" / "sweep.csv").read_text() == (tmp_path / "local" / "sweep.csv").read_text()


WHERE = """
import json, sys
from simulator.studies import ray_cluster
ray = ray_cluster.connect(sys.argv[1])

@ray.remote
def where():
    import hardware, simulator
    return [hardware.__file__, simulator.__file__]

print(json.dumps(ray.get(where.remote())))
"""


def test_the_workers_import_the_shipped_packages_not_the_checkout_they_could_see(cluster_address):
    """Both nodes share this file system, where Ray would put the driver's folder first on the
    workers' sys.path; the shipped copies must win, as on a node without the checkout."""
    proc = subprocess.run([sys.executable, "-c", WHERE, cluster_address], cwd=ROOT, env=ray_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [Path(f) for f in json.loads(proc.stdout.strip().splitlines()[-1])]
    assert all("runtime_resources" in f.parts and not f.is_relative_to(ROOT) for f in files), files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_exit_2(proc: subprocess.CompletedProcess, wall_s: float, *names: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert wall_s < 30
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert all(name in proc.stderr for name in names), proc.stderr


def test_an_address_without_a_cluster_fails_in_one_line_within_30_s(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc, wall_s = run_cli("sweep", write_scenario(tmp_path), *SETS, "--executor", "ray", "--address", address,
                           "--out", tmp_path / "out", env=ray_env())
    assert_one_line_exit_2(proc, wall_s, "--address", address, "no Ray cluster listens")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not TOKEN_AUTH, reason="Ray token authentication arrived in 2.52.0")
def test_a_refused_token_fails_in_one_line_within_30_s_saying_so(tmp_path, cluster_address):
    proc, wall_s = run_cli("sweep", write_scenario(tmp_path), *SETS, "--executor", "ray",
                           "--address", cluster_address, "--out", tmp_path / "out",
                           env=ray_env(RAY_AUTH_TOKEN=f"wrong-{TOKEN}"))
    assert_one_line_exit_2(proc, wall_s, "--address", cluster_address, "refused this client's token",
                           "RAY_AUTH_TOKEN")
    assert not (tmp_path / "out").exists()


SILENT = """
import sys
from simulator.errors import ScenarioError
from simulator.studies import ray_cluster
try:
    ray_cluster.connect(sys.argv[1], timeout_s=3)
except ScenarioError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def test_a_port_that_accepts_but_never_answers_is_given_up_on_after_the_timeout():
    """ray.init alone would retry such a port for minutes (the CLI's bound is 20 s; 3 s here)."""
    with socket.socket() as silent:
        silent.bind(("0.0.0.0", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", SILENT, address], cwd=ROOT, env=ray_env(),
                              capture_output=True, text=True, timeout=60)
        wall_s = time.monotonic() - t0
    assert_one_line_exit_2(proc, wall_s, address, "no Ray cluster answered within 3 s")
