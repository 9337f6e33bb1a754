"""A sweep's connection to Ray: reach the cluster within a bound, and ship the code its workers import.

Workers get the packages `run_point` imports, `hardware` and `simulator` (their preset YAML and
JSON package data included), through Ray's runtime_env `py_modules`, taken from wherever this
process imports them: the checkout of an editable install or site-packages of a plain
`pip install epsim`. Nothing else of the driver's folder travels: not .venv, runs/, .git or the
user's files. The nodes need Ray (`ray[default]`, for runtime_env) and epsim's dependencies (numpy,
simpy, pandas, ...) installed, as any Ray job does; Ray does not install them.

An unreachable address, a silent port and a refused token each fail within CONNECT_TIMEOUT_S +
SOCKET_TIMEOUT_S (25 s) with one ScenarioError, instead of ray.init retrying for minutes.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from types import ModuleType

import hardware
import simulator
from simulator.errors import ScenarioError

RAY_HINT = "Ray is an optional extra; install it with: pip install 'epsim[ray]'  (or: pip install 'ray[default]')"
SHIPPED_PACKAGES = (hardware, simulator)
EXCLUDES = ["__pycache__", "*.pyc", "*.egg-info"]
SOCKET_TIMEOUT_S = 5.0  # TCP connect to the head before ray.init
CONNECT_TIMEOUT_S = 20.0  # ray.init to an existing cluster, upload of the packages included
# Ray 2.60 tries an unreachable GCS for minutes and a refused token for ~20 s (20 tries of 1 s)
LOCAL_START_TIMEOUT_S = 60.0  # no address: Ray starts on this machine, ~10 s on 2 busy cores
# what Ray's C++ core logs when the GCS refuses the token (ray.init itself only says "Failed to connect")
TOKEN_REFUSED_MARKS = ("Unauthenticated", "InvalidAuthToken")
ADDRESS_FORMS = ("auto (the cluster `ray start` left on this machine), HOST:PORT (the head's GCS, port 6379 "
                 "by default) or ray://HOST:PORT (Ray Client, port 10001 by default)")
TOKEN_RULE = ("the Ray cluster refused this client's token: set RAY_AUTH_MODE=token and the cluster's token "
              "in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


def require_ray():
    try:
        import ray
    except ImportError:
        raise ScenarioError("--executor", "ray", RAY_HINT) from None
    return ray


def package_dir(module: ModuleType) -> str:
    [path] = module.__path__  # a regular package: one folder, in a checkout or in site-packages
    return path


def runtime_env(empty_dir: str) -> dict:
    """The job's runtime_env. `working_dir` is an empty folder on purpose: without one, Ray puts the
    driver's current and script folders first on every worker's sys.path, so a node that holds
    another checkout at the same path would import that code instead of the shipped packages."""
    return {"py_modules": [package_dir(p) for p in SHIPPED_PACKAGES], "working_dir": empty_dir,
            "excludes": list(EXCLUDES)}


def parse_address(key: str, address: str) -> tuple[str, int] | None:
    """(host, port) to check with a socket before ray.init; None for `auto`, which Ray looks up."""
    if address == "auto":
        return None
    rest = address
    if "://" in address:
        scheme, rest = address.split("://", 1)
        if scheme != "ray":
            hint = " (http:// is the dashboard, for `ray job submit`)" if scheme in ("http", "https") else ""
            raise ScenarioError(key, address, f"{scheme}:// is not a Ray address{hint}; give {ADDRESS_FORMS}")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ScenarioError(key, address, f"must be {ADDRESS_FORMS}")
    return host, int(port)


def check_reachable(key: str, address: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S).close()
    except socket.gaierror:
        raise ScenarioError(key, address, f"unknown host {host!r}") from None
    except TimeoutError:
        raise ScenarioError(key, address, f"nothing answered at {host}:{port} within {SOCKET_TIMEOUT_S:.0f} s "
                                          "(wrong host, or a firewall?)") from None
    except OSError as exc:
        raise ScenarioError(key, address, f"no Ray cluster listens at {host}:{port} ({exc.strerror or exc}); "
                                          "start one with `ray start --head`, or give its head's address") from None


@contextmanager
def stderr_to_file():
    """fd 2 into a temporary file for the duration: Ray's C++ core logs every failed try there,
    noise around a one-line error, and the only place that says a token was refused."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def logged(log) -> str:
    """What fd 2 received so far, read without moving the offset Ray's writes share."""
    return os.pread(log.fileno(), os.fstat(log.fileno()).st_size, 0).decode(errors="replace")


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def connect(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S):
    """ray.init for a sweep, with the packages shipped: to the cluster at `address` (or at
    RAY_ADDRESS), or without either a Ray that this machine starts (or the one `ray start` left
    here). Returns the ray module. A connection made before (ray.init by the caller) is kept as it
    is; then the caller's runtime_env decides what the workers import. Raises ScenarioError naming
    the address when the cluster cannot be reached or refuses the token."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    key = "--address"
    if address is None and os.environ.get("RAY_ADDRESS"):
        key, address = "RAY_ADDRESS", os.environ["RAY_ADDRESS"]
    if address in (None, "local"):
        timeout_s = max(timeout_s, LOCAL_START_TIMEOUT_S)
    else:
        target = parse_address(key, address)
        if target is not None:
            check_reachable(key, address, *target)
    with tempfile.TemporaryDirectory(prefix="epsim-ray-") as empty:
        kwargs = {"runtime_env": runtime_env(empty), "log_to_driver": False, "logging_level": logging.WARNING}
        init_within(ray, key, address, timeout_s, kwargs)
    return ray


def init_within(ray, key: str, address: str | None, timeout_s: float, kwargs: dict) -> None:
    """ray.init in a thread that is given up on after timeout_s (ray.init has no timeout of its own;
    a thread stuck in Ray's C++ retries does not hold up the exit)."""
    box: dict = {}

    def init() -> None:
        try:
            ray.init(address=address, **kwargs)
            box["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            box["error"] = exc

    with stderr_to_file() as log:
        thread = threading.Thread(target=init, name="epsim-ray-init", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            if any(mark in logged(log) for mark in TOKEN_REFUSED_MARKS):
                break
            thread.join(0.2)
        text = logged(log)
    if not thread.is_alive() and box.get("ok"):
        return
    error = box.get("error")
    shown = address or "(none: Ray on this machine)"
    if any(mark in text for mark in TOKEN_REFUSED_MARKS) or type(error).__name__ == "AuthenticationError":
        raise ScenarioError(key, shown, TOKEN_RULE)
    if error is None and address in (None, "local"):
        raise ScenarioError(key, shown, f"Ray did not start on this machine within {timeout_s:.0f} s")
    if error is None:
        raise ScenarioError(key, shown, f"no Ray cluster answered within {timeout_s:.0f} s (is this the head's GCS "
                                        "port, 6379 by default, or with ray:// its Ray Client port, 10001?)")
    raise ScenarioError(key, shown, f"cannot connect to Ray: {first_line(error)}")
