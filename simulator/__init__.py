"""epsim's engine and workload: scenario loading, routing, placement, traffic, network, pipeline, metrics."""

__version__ = "0.1.0"
