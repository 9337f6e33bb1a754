"""The scenario: its schema (schema.py), loading and overrides (load.py), the layout rules (rules.py)
and the per-GPU memory they check (memory.py)."""
from simulator.scenario.load import (
                                     apply_overrides,
                                     build_scenario,
                                     load_scenario,
                                     parse_override,
                                     read_scenario_file,
                                     resolve_calibration,
)
from simulator.scenario.schema import Scenario

__all__ = ["Scenario", "apply_overrides", "build_scenario", "load_scenario", "parse_override",
           "read_scenario_file", "resolve_calibration"]
