"""`overcast agent`: enrol once with a join token, then run.

The running agent is kept small (it runs on every host: bench/agent_footprint_bench.py):

- it runs as ``python -m agent`` started afresh (exec: same process id, same descriptors)
  once enrolment is done, so that neither the controller's CLI (``overcast agent``) nor
  enrolment (urllib, OpenSSL through ``ssl``, cryptography) stays loaded for days; the new
  process gets ``MALLOC_ARENA_MAX=1`` unless it is set (glibc's malloc otherwise gives each
  of the agent's mostly idle threads an arena of its own);
- it does not load Python's ``ssl`` and ``_hashlib`` (OpenSSL's libraries and their
  state: ~4.5 MiB): gRPC brings its own TLS (BoringSSL, inside grpcio), hashlib falls back
  to its built-in hashes, and the certificate's dates are read from its DER
  (``agent.state.pem_validity``); a renewal makes its key in a child process
  (``agent.state.make_key_and_csr_isolated``), so cryptography is not loaded either.

``OVERCAST_AGENT_LEAN=1`` marks the restarted process (and skips the restart when set)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from agent.state import AgentState, default_state_dir

log = logging.getLogger("agent")

LEAN_ENV = "OVERCAST_AGENT_LEAN"

# exit codes: as the CLI's (1 failed, 2 usage, 3 refused/revoked, 5 unreachable)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controller", help="the controller's URL (with --token, to enrol)")
    p.add_argument("--token", help="a join token: enrol this host (once)")
    p.add_argument("--token-file", metavar="FILE",
                   help="read the join token from FILE ('-': standard input) instead of --token, "
                        "which other users of this host can read in the process list")
    p.add_argument("--ca-fingerprint", help="SHA-256 of the controller's CA, from the join command")
    p.add_argument("--state-dir", help=f"where the identity and spool live (default {default_state_dir()})")
    p.add_argument("--hostname", help="the name to enrol under (default: this host's)")
    p.add_argument("--interval", type=float, help="seconds between metric collections (default: the controller's, 10)")
    p.add_argument("--spool-max-mb", type=int, help="on-disk spool limit while offline (MiB; default 64)")
    p.add_argument("--enrol-only", action="store_true", help="enrol, then exit")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--config", metavar="FILE",
                   help="a TOML file with these options (controller, ca_fingerprint, state_dir, "
                        "hostname, interval, spool_max_mb, log_level); flags override it "
                        "(default /etc/overcast/agent.toml when it exists; '' for none)")


def run(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, apply

    try:
        apply(args)  # the config file fills what no flag gave
    except ConfigError as exc:
        print(f"overcast agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    state = AgentState(Path(args.state_dir) if args.state_dir else default_state_dir())
    if getattr(args, "token_file", None):
        if args.token:
            print("overcast agent: give --token or --token-file, not both", file=sys.stderr)
            return 2
        try:
            if args.token_file == "-":
                args.token = sys.stdin.readline().strip()
            else:
                with open(args.token_file) as f:
                    args.token = f.readline().strip()
        except OSError as exc:
            print(f"overcast agent: cannot read the join token: {exc}", file=sys.stderr)
            return 2
        if not args.token:
            print(f"overcast agent: no join token in {args.token_file}", file=sys.stderr)
            return 2
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
    restart_lean(state, args)  # returns only where it cannot
    block_openssl()
    import asyncio
    import signal

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

    code = asyncio.run(main())
    if agent.restart_requested:  # upgraded (agent.upgrade): the new code runs in this process
        restart_lean(state, args, force=True)
        return 1  # exec failed (logged): a supervisor's restart runs the new code
    return code


def restart_lean(state: AgentState, args: argparse.Namespace, force: bool = False) -> None:
    """Replace this process with ``python -m agent`` for this state directory (see the
    module's docstring); returns only when already restarted (unless ``force``: after an
    upgrade) or when exec fails."""
    if (os.environ.get(LEAN_ENV) and not force) or not sys.executable:
        return
    argv = [sys.executable, "-m", "agent", "--state-dir", str(state.directory),
            "--log-level", args.log_level or "info", "--spool-max-mb", str(args.spool_max_mb or 64)]
    if getattr(args, "config", None) is not None:
        argv += ["--config", args.config]  # the file read ("" for none), not the default again
    if args.interval is not None:
        argv += ["--interval", repr(args.interval)]
    env = dict(os.environ)
    env[LEAN_ENV] = "1"
    env.setdefault("MALLOC_ARENA_MAX", "1")
    # before gRPC loads in the new process: runs and shells fork (agent/exec.py says why)
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    # whatever this process could import, the new one can: `overcast agent` from a virtual
    # environment, a source tree on PYTHONPATH, an installed package
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:
        log.warning("cannot restart as %s (%s): running in this process", " ".join(argv[:3]), exc)


def block_openssl() -> None:
    """Make ``import ssl`` and ``import _hashlib`` fail in this process unless they are loaded
    already: asyncio then runs without TLS support of its own, which the agent never uses
    (gRPC does its TLS itself), and hashlib uses its built-in hashes."""
    for name in ("ssl", "_ssl", "_hashlib"):
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]
