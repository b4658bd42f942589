"""`python -m sweeps run|status|report|select|worker SWEEP.yaml ...` (studies: `python -m studies reproduce`)"""
import sys

from .cli import main

sys.exit(main())
