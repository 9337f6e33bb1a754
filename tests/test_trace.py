"""The Chrome/Perfetto trace: valid trace-event JSON, a process per GPU, a thread per stream,
slices named by layer / op / micro-batch / chunk, and utilisation counters that conserve bytes."""
import json
import re

import numpy as np
import pytest

from hardware.topology import Topology
from reports.trace import STREAM_TID, sampled_gpus, trace_document, utilisation_steps
from simulator.api import simulate_scenario
from tests.test_cli import run_sim, write_scenario

PHASES = {"M", "X", "C"}


@pytest.fixture(scope="module")
def result():
    from tests.conftest import make_scenario
    _, _, r = simulate_scenario(make_scenario())
    return r


@pytest.fixture(scope="module")
def doc(result):
    return json.loads(json.dumps(trace_document(result)))  # what a viewer reads back


def test_trace_is_a_trace_event_object_with_well_formed_events(doc):
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"}
    for ev in doc["traceEvents"]:
        assert ev["ph"] in PHASES
        assert isinstance(ev["name"], str) and isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "X":
            assert ev["ts"] >= 0 and ev["dur"] >= 0
        if ev["ph"] == "C":
            assert ev["ts"] >= 0 and all(isinstance(v, (int, float)) for v in ev["args"].values())
        if ev["ph"] == "M":
            assert ev["name"] in {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}


def test_every_gpu_is_a_process_with_a_named_thread_per_stream(doc, result):
    names = {ev["pid"]: ev["args"]["name"] for ev in doc["traceEvents"] if ev["name"] == "process_name"}
    assert [n for pid, n in names.items() if pid < result.num_gpus] == [
        f"GPU {g} (node {g // 4}, EP group 0, rank {g})" for g in range(result.num_gpus)]
    threads = {(ev["pid"], ev["tid"]) for ev in doc["traceEvents"] if ev["name"] == "thread_name"}
    assert threads == {(g, tid) for g in range(result.num_gpus) for tid in STREAM_TID.values()}


def test_one_slice_per_recorded_interval_at_its_simulated_time(doc, result):
    slices = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
    assert len(slices) == sum(len(ivs) for ivs in result.intervals)
    stream, start_s, end_s, op = result.intervals[3][5]
    match = [ev for ev in slices if ev["pid"] == 3 and ev["name"] == op.label and ev["tid"] == STREAM_TID[stream]]
    assert match[0]["args"] == op._asdict()
    assert match[0]["ts"] == pytest.approx(start_s * 1e6, abs=1e-4)  # rounded to 0.1 ns
    assert match[0]["dur"] == pytest.approx((end_s - start_s) * 1e6, abs=2e-4)


def test_slices_are_named_by_layer_op_micro_batch_and_chunk_with_the_phase_in_args(doc):
    slices = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
    chain_ops = [ev for ev in slices if ev["args"]["phase"] != "update"]
    assert all(re.fullmatch(r"L\d+ \w+ mb\d+ c\d+", ev["name"]) for ev in chain_ops)
    update = {ev["name"] for ev in slices if ev["args"]["phase"] == "update"}
    assert update == {"optimizer", "L0 grad_allreduce"}  # one bucket holds the tiny model's dense grads
    phases = {ev["args"]["phase"] for ev in slices}
    assert phases == {"forward", "backward", "update"}  # the tiny scenario trains
    ops = {ev["args"]["op"] for ev in slices if ev["cat"] == "comm"}
    assert ops == {"dispatch", "combine", "grad_allreduce"}


def test_utilisation_counters_carry_every_byte_of_the_collectives(result):
    """Integral of (utilisation x class line rate) over time == bytes the collectives moved."""
    topo = Topology(result.scenario.cluster)
    peak = result.ports.peak_bytes_per_s
    steps = utilisation_steps(result)
    for cls, out_port in (("nvlink", topo.nvl_out(0)), ("ib", topo.nic_out(0))):
        times, level = steps[cls]
        carried = float(np.sum(level[:-1] * np.diff(times))) * float(peak[out_port]) * topo.num_gpus
        expected = sum(getattr(c, f"bytes_{cls}") for c in result.collectives.values())
        assert carried == pytest.approx(expected, rel=1e-9)
        assert level[-1] == pytest.approx(0.0, abs=1e-12) and (level >= 0).all()


def test_counters_are_in_a_network_process(doc, result):
    counters = [ev for ev in doc["traceEvents"] if ev["ph"] == "C"]
    assert {ev["name"] for ev in counters} == {"NVLink utilisation (% of line rate)", "IB utilisation (% of line rate)"}
    assert {ev["pid"] for ev in counters} == {result.num_gpus}


def test_large_clusters_are_sampled_and_the_file_says_which_gpus(result):
    assert sampled_gpus(8, 64) == list(range(8))
    assert sampled_gpus(256, 4) == [0, 85, 170, 255]
    doc = trace_document(result, max_gpus=3)
    pids = {ev["pid"] for ev in doc["traceEvents"] if ev["ph"] == "X"}
    assert pids == {0, 4, 7} and doc["otherData"]["gpus_in_trace"] == [0, 4, 7]
    assert "3 of 8 GPUs" in doc["otherData"]["sampling"]


def test_run_writes_trace_json_by_default_and_not_with_no_trace(tmp_path):
    path = write_scenario(tmp_path)
    proc = run_sim(path, "--out", tmp_path / "on")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "on" / "trace.json").read_text())["traceEvents"]
    assert "trace.json" in proc.stdout
    proc = run_sim(path, "--no-trace", "--out", tmp_path / "off")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "off" / "trace.json").exists()
