"""`python -m sweeps run|status|report|select|worker SWEEP.yaml ...`"""
import sys

from .cli import main

sys.exit(main())
