"""Optuna sweeps over the training epsilon: a sweep is a YAML file (configs/sweeps/), a trial is one
`train.py fit` run, and `python -m sweeps run|status|report|select` drives it (see sweeps/cli.py)."""
