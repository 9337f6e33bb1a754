"""Pure functions from results to tables and report files. Reads results; never drives the engine."""
