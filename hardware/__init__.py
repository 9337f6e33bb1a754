"""Ground floor of epsim: hardware specs, presets (YAML data), topology and the compute model.

Imports nothing from simulator/ or reports/, and never imports torch at module load.
"""
