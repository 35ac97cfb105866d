# The plugin's example apps are run by tests/sweeps/test_hydra_optuna_examples.py, not imported
# (one has a hyphen in its name): keep pytest's doctest collection out of them.
collect_ignore_glob = ["example/*.py"]
