"""`python -m benchmark protocols|evaluate|export|build ...`"""
import sys

from .cli import main

sys.exit(main())
