"""`python -m agent ...`: the same as `overcast agent ...` without the controller's CLI."""

import argparse
import sys

from agent.main import add_arguments, run

parser = argparse.ArgumentParser(prog="overcast agent", description="Run the Overcast agent.")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
