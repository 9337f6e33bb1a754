"""`pip install .` (not editable) into a fresh venv outside the repository gives an `epsim` that
finds its default scenario, presets and shipped configs as package data.

Offline: the wheel is built from a copy of the sources with this environment's setuptools
(--no-build-isolation), installed with --no-deps, and the fresh venv borrows this environment's
dependencies through a .pth line (a plain path: the site-packages' own .pth files, such as an
editable install of epsim, are not run). ~20-30 s on a busy 2-core machine.
"""
import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from simulator import __version__

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "run_sim.py", "hardware", "simulator", "reports", "scenarios")


def sh(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy, so the build's build/ and egg-info never land in the repository
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    build = sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-w", tmp / "wheels", src, cwd=tmp)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "wheels").glob("epsim-*.whl"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp)
    assert install.returncode == 0, install.stderr[-2000:]
    purelib = sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).stdout.strip()
    Path(purelib, "borrowed-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp / "elsewhere"  # not the repository: nothing is found through the working directory
    work.mkdir()
    return env_dir, work


def test_installed_epsim_reports_its_version(installed):
    env_dir, work = installed
    proc = sh(env_dir / "bin" / "epsim", "--version", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"epsim {__version__}"


def test_installed_epsim_runs_the_default_scenario_from_package_data(installed):
    env_dir, work = installed
    where = sh(env_dir / "bin" / "python", "-c", "import simulator; print(simulator.__file__)", cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)  # the installed copy, not this checkout
    proc = sh(env_dir / "bin" / "epsim", "run", "--no-trace", "--out", work / "out", cwd=work,
              env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["scenario"] == "deepseek-v3-ep64" and 0 < summary["mfu"] < 1
    assert summary["epsim_version"] == __version__


def test_installed_epsim_reads_a_shipped_hf_config_and_new_preset(installed):
    env_dir, work = installed
    proc = sh(env_dir / "bin" / "epsim", "run", "--model-config", "qwen3-30b-a3b", "--set", "hardware.preset=h200",
              "--set", "model.num_layers=2", "--no-trace", "--out", work / "qwen", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((work / "qwen" / "summary.json").read_text())
    assert summary["provenance"]["hardware_preset"] == "h200"
    assert summary["provenance"]["model_preset"] == "hf_config qwen3-30b-a3b"
