"""The engine: GPU streams (gpu.py), the fluid network (network.py, fairshare.py), collectives and
their paths (collective.py, paths.py), the op program (program.py), the run (run.py) and what it
records (record.py)."""
from simulator.engine.record import RunRecord
from simulator.engine.run import Run, simulate

__all__ = ["Run", "RunRecord", "simulate"]
