"""epsim: the scenario, the rank layout, the workload (routing, placement, traffic), the engine, metrics and studies."""

__version__ = "0.10.0"
