"""Benchmarks and cross-checks for medrobust; each module is a script (`python bench/NAME.py --help`)."""
