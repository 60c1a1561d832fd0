"""`overcast agent`: enrol once with a join token, then run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.state import AgentState, default_state_dir

log = logging.getLogger("agent")

# exit codes: as the CLI's (1 failed, 2 usage, 3 refused/revoked, 5 unreachable)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controller", help="the controller's URL (with --token, to enrol)")
    p.add_argument("--token", help="a join token: enrol this host (once)")
    p.add_argument("--ca-fingerprint", help="SHA-256 of the controller's CA, from the join command")
    p.add_argument("--state-dir", help=f"where the identity and spool live (default {default_state_dir()})")
    p.add_argument("--hostname", help="the name to enrol under (default: this host's)")
    p.add_argument("--interval", type=float, help="seconds between metric collections (default: the controller's, 10)")
    p.add_argument("--spool-max-mb", type=int, default=64, help="on-disk spool limit while offline (MiB)")
    p.add_argument("--enrol-only", action="store_true", help="enrol, then exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    state = AgentState(Path(args.state_dir) if args.state_dir else default_state_dir())
    if args.token:
        if state.enrolled:
            print(f"overcast agent: already enrolled as {state.agent_id} ({state.directory}); "
                  "ignoring --token", file=sys.stderr)
        else:
            if not args.controller:
                print("overcast agent: --token needs --controller URL", file=sys.stderr)
                return 2
            from agent.enroll import EnrolError, enroll

            if not args.ca_fingerprint:
                print("overcast agent: warning: no --ca-fingerprint: trusting the controller's CA "
                      "on first use", file=sys.stderr)
            try:
                agent_id = enroll(state, args.controller, args.token, args.ca_fingerprint or "",
                                  args.hostname)
            except EnrolError as exc:
                print(f"overcast agent: {exc}", file=sys.stderr)
                msg = str(exc)
                return 5 if "cannot reach" in msg else 3
            print(f"enrolled as agent {agent_id}; state in {state.directory}", file=sys.stderr)
    if not state.enrolled:
        print(f"overcast agent: not enrolled ({state.directory}): run with --controller URL "
              "--token JOIN_TOKEN --ca-fingerprint SHA256", file=sys.stderr)
        return 3
    if args.enrol_only:
        return 0
    from agent.control import Agent, Revoked

    agent = Agent(state, args.interval, args.spool_max_mb * 1024 * 1024)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        try:
            await agent.run()
        except Revoked as exc:
            print(f"overcast agent: the controller refuses this agent ({exc}); enrol again with "
                  "a new join token", file=sys.stderr)
            return 3
        return 0

    return asyncio.run(main())
