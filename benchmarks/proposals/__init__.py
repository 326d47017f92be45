"""Code proposals for the package, each with the measurement of its gain (not part of `run_all` by default)."""
