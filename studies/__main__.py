"""`python -m studies reproduce STUDY.yaml --out DIR [--set key=value ...]`"""
import sys

from .cli import main

sys.exit(main())
