"""The CI gate on predicted MFU: the reference scenarios re-simulate to their golden numbers.

These are the only tests that run the reference scenarios as shipped (large-ep256 included, about
25 s). A failure lists every changed field; if the change is intended, review the diff and run
`python run_sim.py golden --update`.
"""
import json
from pathlib import Path

import pytest

from simulator.studies import golden
from tests.test_cli import TINY, run_sim, write_scenario

ROOT_GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = Path(__file__).parents[1] / "scenarios"


def test_every_reference_scenario_has_a_golden_file():
    missing = [s for s in golden.GOLDEN_SCENARIOS if not golden.golden_path(ROOT_GOLDEN, s).is_file()]
    assert not missing, f"no golden for {missing}: python run_sim.py golden --update"


@pytest.mark.parametrize("stem", golden.GOLDEN_SCENARIOS)
def test_reference_scenario_predicts_its_golden_mfu_step_time_and_collective_times(stem):
    old = golden.read_golden(ROOT_GOLDEN, stem)
    assert old is not None, f"no golden for {stem}: python run_sim.py golden --update"
    changes = golden.compare(stem, old, golden.simulate_record(SCENARIOS, stem),
                             tolerances=golden.read_tolerances(ROOT_GOLDEN, stem))
    assert not changes, ("predictions changed beyond rtol %g:\n" % golden.RTOL
                         + "\n".join(map(str, changes))
                         + "\nif intended: python run_sim.py golden --update")


def test_a_change_names_the_scenario_the_field_and_both_values():
    old = {"mfu": 0.5, "step_time_s": 1.0, "collectives": {"dispatch": {"mean_time_s": 2e-3}}}
    new = {"mfu": 0.5 * (1 + 2e-9), "step_time_s": 1.0 * (1 + 5e-10), "collectives": {"dispatch": {"mean_time_s": 3e-3}}}
    changes = golden.compare("default", old, new)
    assert [c.field for c in changes] == ["collectives.dispatch.mean_time_s", "mfu"]  # 5e-10 is within rtol
    text = str(changes[0])
    assert text.startswith("default: collectives.dispatch.mean_time_s: old 0.002 -> new 0.003")


def test_a_field_with_a_stated_tolerance_is_held_to_it_and_the_rest_to_rtol():
    old = {"mfu": 0.5, "step_time_s": 1.0}
    new = {"mfu": 0.5 * (1 + 1e-7), "step_time_s": 1.0 * (1 + 1e-7)}
    loose = {"mfu": {"rtol": 1e-6, "why": "a reduction order a numpy upgrade may change"}}
    assert [c.field for c in golden.compare("x", old, new, tolerances=loose)] == ["step_time_s"]
    assert [c.field for c in golden.compare("x", old, new)] == ["mfu", "step_time_s"]
    text = golden.golden_text("x", new, loose)
    assert json.loads(text)["tolerances"] == loose and "tolerances" not in json.loads(golden.golden_text("x", new))


def test_a_field_that_appears_or_vanishes_is_a_change():
    changes = golden.compare("x", {"mfu": 0.5}, {"mfu": 0.5, "collectives": {"grad_allreduce": {"count": 1}}})
    assert [(c.field, c.old, c.new) for c in changes] == [("collectives.grad_allreduce.count", None, 1)]


def test_golden_command_checks_without_writing_and_updates_only_when_asked(tmp_path):
    scenarios, goldens = tmp_path / "scenarios", tmp_path / "golden"
    scenarios.mkdir()
    write_scenario(scenarios, TINY, "tiny.yaml")
    args = ("golden", "tiny", "--dir", goldens, "--scenarios-dir", scenarios)

    check = run_sim(*args)
    assert check.returncode == 1 and "no golden yet" in check.stdout
    assert not goldens.exists()

    update = run_sim(*args, "--update")
    assert update.returncode == 0, update.stderr
    written = json.loads((goldens / "tiny.json").read_text())
    assert written["record"]["scenario"] == "cli-tiny" and written["record"]["mfu"] > 0

    assert run_sim(*args).returncode == 0

    written["record"]["mfu"] *= 1.01
    (goldens / "tiny.json").write_text(json.dumps(written))
    drift = run_sim(*args)
    assert drift.returncode == 1 and "tiny: mfu: old" in drift.stdout
    assert json.loads((goldens / "tiny.json").read_text()) == written  # a check never rewrites
