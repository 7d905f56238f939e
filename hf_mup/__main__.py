"""`python -m hf_mup`: the `hf-mup` command line, which lives in the lab (`hf_mup.lab.cli`).

The door from the command line into the lab: nothing in the core imports this module (`import hf_mup` never runs it).
"""
import sys

from .lab.cli import main

sys.exit(main())
