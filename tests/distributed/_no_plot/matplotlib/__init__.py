"""Put first on PYTHONPATH by tests/distributed/mpi_jobs.py (plots=False): `import matplotlib`
fails, so RunLog.plot skips the plot (about a second per epoch) in runs whose plot no test reads."""
raise ImportError("matplotlib is hidden in this test run (tests/distributed/_no_plot)")
