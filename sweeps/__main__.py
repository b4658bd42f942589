"""`python -m sweeps run|status|report|select|worker SWEEP.yaml ...` and `python -m sweeps reproduce STUDY.yaml --out DIR`"""
import sys

from .cli import main

sys.exit(main())
