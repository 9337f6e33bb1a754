"""Studies that run many simulations: sweeps (sweep.py, with their files in sweep_store.py), the
golden MFU gate (golden.py) and the validation against published measurements (validation/)."""
