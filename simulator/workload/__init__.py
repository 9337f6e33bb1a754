"""The workload, elaborated before the engine runs: routing (gating), placement, per-pair traffic
and the compute time of every kernel."""
