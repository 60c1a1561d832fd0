"""`python -m agent ...`: the same as `overcast agent ...` without the controller's CLI."""

import argparse
import os
import sys

# read once, when gRPC loads: the children of runs and shells must not run gRPC's fork
# handlers (grpc/grpc#31885; agent/exec.py)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from agent.main import add_arguments, run  # noqa: E402

parser = argparse.ArgumentParser(prog="overcast agent", description="Run the Overcast agent.")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
