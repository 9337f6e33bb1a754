"""Hold-out accuracy of the calibrated compute model: fit on part of a calibration's measured grid,
predict the rest, print median and p90 |error|.

    python benchmarks/calibration_holdout.py [hardware/calibrations/cpu-local.json]

Two splits of the expert-block measurements (the block the engine times for every MoE layer):
- tokens: fit on every other token count, predict the others (all shapes);
- shape: leave one model shape out, fit on the rest, predict it (every shape in turn).
Single GEMMs: leave one (n, k) shape out in turn.
Targets (issue 'calibrated compute model'): median <= 5 %, p90 <= 15 %.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hardware.calibrated import (ELEMENT_BYTES, block_rows, fit_nonnegative, gemm_features,  # noqa: E402
                                 row_block_features, uncontended)


def block_errors(train: list[dict], test: list[dict], eb: float, fault_threshold: float | None) -> np.ndarray:
    feats = lambda rows: np.array([row_block_features(r, eb, fault_threshold) for r in rows])  # noqa: E731
    coef = fit_nonnegative(feats(train), np.array([r["median_s"] for r in train]))
    measured = np.array([r["median_s"] for r in test])
    return np.abs(feats(test) @ coef / measured - 1.0)


def gemm_errors(train: list[dict], test: list[dict], eb: float) -> np.ndarray:
    feats = lambda rows: np.array([gemm_features(r["m"], r["n"], r["k"], eb) for r in rows])  # noqa: E731
    coef = fit_nonnegative(feats(train), np.array([r["median_s"] for r in train]))
    measured = np.array([r["median_s"] for r in test])
    return np.abs(feats(test) @ coef / measured - 1.0)


def holdout(measurements: list[dict], dtype: str, impl: str = "loop",
            fault_threshold: float | None = None) -> dict[str, np.ndarray]:
    """|error| per held-out point. The permute-only rows (their hidden sizes differ from the blocks')
    stay in every training set; only expert blocks are predicted."""
    eb = ELEMENT_BYTES[dtype]
    measurements = uncontended(measurements)
    rows = block_rows(measurements, impl)
    permutes = [r for r in rows if r["kind"] == "permute"]
    blocks = [r for r in rows if r["kind"] == "expert_block"]
    gemms = [r for r in measurements if r["kind"] == "gemm"]
    token_levels = sorted({r["num_tokens"] for r in blocks})
    held = set(token_levels[1::2])
    out = {"block, other token counts": block_errors(
        permutes + [r for r in blocks if r["num_tokens"] not in held], [r for r in blocks if r["num_tokens"] in held],
        eb, fault_threshold)}
    shapes = sorted({(r["hidden_size"], r["intermediate_size"]) for r in blocks})
    out["block, other shapes"] = np.concatenate([
        block_errors(permutes + [r for r in blocks if (r["hidden_size"], r["intermediate_size"]) != s],
                     [r for r in blocks if (r["hidden_size"], r["intermediate_size"]) == s], eb, fault_threshold)
        for s in shapes])
    gshapes = sorted({(r["n"], r["k"]) for r in gemms})
    out["gemm, other shapes"] = np.concatenate([
        gemm_errors([r for r in gemms if (r["n"], r["k"]) != s], [r for r in gemms if (r["n"], r["k"]) == s], eb)
        for s in gshapes])
    return out


def main(argv: list[str]) -> int:
    import json

    path = Path(argv[0]) if argv else ROOT / "hardware" / "calibrations" / "cpu-local.json"
    data = json.loads(path.read_text())
    print(f"calibration {path.name}: {data['device']}, torch {data['torch_version']}, {data['date']}")
    print(f"{'split':<28}{'n':>4}{'median |err|':>14}{'p90 |err|':>11}{'max |err|':>11}")
    for dtype, rows in data["measurements"].items():
        fit = data["fits"][dtype]
        for name, err in holdout(rows, dtype, fit.get("block_impl", "loop"), fit.get("page_fault_threshold_bytes")).items():
            print(f"{name:<28}{len(err):>4}{np.median(err):>13.1%}{np.quantile(err, 0.9):>11.1%}{err.max():>11.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
