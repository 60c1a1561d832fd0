"""The shell text that enables and disables monitoring on a host: pure, nothing here blocks.

Enabling runs the very one-line install command a join token prints (``install/agent.sh``
fetched from the controller), wrapped in a small POSIX sh script run as root over SSH:

- where ``sudo`` is missing and we are root already, a ``sudo`` that just runs its command
  stands in for it (the one-liner says ``sudo sh ...``; minimal hosts have no sudo);
- with systemd, the install script ends once its unit runs: the wrapper runs it in the
  foreground, its output is the job's;
- without systemd (containers), the wrapper runs the script with ``--foreground`` (it runs
  the agent once it is installed) in a session of its own, so that the agent outlives the
  SSH session and the run's process group; it follows the install's log into the job's
  output until a ``python -m agent`` of that session runs (enrolment's ``--enrol-only``
  aside) or the script ends (its exit status), then moves the log to
  ``<state dir>/agent.log``, where the agent goes on writing. A TERM (the job cancelled or
  timed out) is passed on to the install, which then takes back what it added.

Disabling runs the install script's own ``--uninstall``: over SSH as it is; through the
agent detached from the agent's process (uninstalling stops the agent, and a stopping agent
kills the runs it started)."""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass
from typing import Any

from controller.errors import Invalid
from controller.monitoring.model import DEFAULT_INSTALL_TIMEOUT, PATH_OPTION

DEFAULT_STATE = "/var/lib/overcast-agent"


@dataclass(frozen=True)
class Options:
    """The install script's options a request may set (each checked as the script does)."""

    user: bool = False
    prefix: str = ""
    config_dir: str = ""
    state_dir: str = ""
    interval: int = 0
    timeout: int = DEFAULT_INSTALL_TIMEOUT

    def args(self) -> list[str]:
        out = ["--user"] if self.user else []
        out += self.dirs()
        if self.interval:
            out += ["--interval", str(self.interval)]
        return out

    def dirs(self) -> list[str]:
        out: list[str] = []
        for flag, value in (("--prefix", self.prefix), ("--config-dir", self.config_dir),
                            ("--state-dir", self.state_dir)):
            if value:
                out += [flag, value]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "prefix": self.prefix, "config_dir": self.config_dir,
                "state_dir": self.state_dir, "interval": self.interval}


def options(body: dict[str, Any], max_timeout: int) -> Options:
    """The options of an enable-monitoring request (its body, schema-checked already)."""
    paths = {}
    for name in ("prefix", "config_dir", "state_dir"):
        value = str(body.get(name) or "")
        if value and (not PATH_OPTION.match(value) or "/../" in value + "/"):
            raise Invalid(f"{name} must be an absolute path of letters, digits and _ . / + -",
                          field=name)
        paths[name] = value.rstrip("/") if value != "/" else value
    timeout = int(body.get("timeout") or min(DEFAULT_INSTALL_TIMEOUT, max_timeout))
    if not 30 <= timeout <= max_timeout:
        raise Invalid(f"timeout must be 30 to {max_timeout} seconds", field="timeout")
    return Options(user=bool(body.get("user")), interval=int(body.get("interval") or 0),
                   timeout=timeout, **paths)


def stored_options(doc: dict[str, Any]) -> Options:
    """The options a machine's agent was installed with (defaults when unknown)."""
    o = (doc.get("_monitoring") or {}).get("options") or {}
    return Options(user=bool(o.get("user")), prefix=str(o.get("prefix") or ""),
                   config_dir=str(o.get("config_dir") or ""),
                   state_dir=str(o.get("state_dir") or ""))


_ROOT = """\
if [ "$(id -u)" != 0 ]; then
    say "this needs root: log in as root, or as a user who may sudo without a password"
    exit 1
fi
"""

_SUDO_SHIM = """\
shim=""
if ! command -v sudo >/dev/null 2>&1; then
    # root already: what the one-liner asks sudo to do, it may do itself
    shim=$(mktemp -d) || exit 1
    printf '#!/bin/sh\\n[ "${1:-}" = -n ] && shift\\nexec "$@"\\n' > "$shim/sudo"
    chmod 755 "$shim/sudo"
    PATH="$shim:$PATH"; export PATH
fi
"""

_ENABLE = """\
#!/bin/sh
# Overcast: enable monitoring on this host: install the agent with the controller's one-line
# install command, as root (written by the controller, run over SSH).
set -u
say() { echo "overcast monitoring: $*"; }
STATE=@STATE@
@ROOT@
@SHIM@
done_() { [ -n "$shim" ] && rm -rf "$shim"; [ -n "$work" ] && rm -rf "$work"; exit "$1"; }
work=""
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    work=$(mktemp -d) || done_ 1
    # the command holds the join token: in a private file, not on a command line
    cat > "$work/install.sh" <<'@EOF@'
@INSTALL@
@EOF@
    say "installing the agent (systemd: it becomes the unit overcast-agent.service)"
    sh "$work/install.sh" </dev/null 2>&1
    done_ $?
fi
# No systemd: the script's --foreground runs the agent here once it is installed. Start it
# in a session of its own, from a directory beside the state directory (the same file
# system: its log is moved into the state directory, and the agent goes on writing there).
anc=$(dirname "$STATE")
while [ ! -d "$anc" ]; do anc=$(dirname "$anc"); done
work=$(mktemp -d "$anc/.overcast-monitoring.XXXXXX") || { say "cannot write in $anc"; done_ 1; }
cat > "$work/install.sh" <<'@EOF@'
@INSTALL@ --foreground
@EOF@
log="$work/install.log"
: > "$log"
bg="" pid=""
stop() {  # the job was cancelled or timed out: the install takes back what it added
    [ -z "$pid" ] && pid=$(cat "$work/pid" 2>/dev/null)
    pid=${pid:-$bg}
    # its whole group; dash's kill needs "--" before -PGID, busybox's refuses it
    [ -n "$pid" ] && { kill -s TERM -- "-$pid" 2>/dev/null || kill -s TERM "-$pid" 2>/dev/null ||
        kill -s TERM "$pid" 2>/dev/null; }
    i=0  # the runner kills this wrapper 2 s after its TERM: wait a little less
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 15 ]; do sleep 0.1; i=$((i + 1)); done
    done_ 143
}
trap stop TERM INT HUP
start='echo $$ > "$1"; sh "$2"; echo $? > "$3"'
if command -v setsid >/dev/null 2>&1; then
    setsid sh -c "$start" sh "$work/pid" "$work/install.sh" "$work/rc" >"$log" 2>&1 </dev/null &
else
    nohup sh -c "$start" sh "$work/pid" "$work/install.sh" "$work/rc" >"$log" 2>&1 </dev/null &
fi
bg=$!
say "no systemd here: the agent will run in a session of its own"
seen=0
show() {  # what the install wrote since the last look
    size=$(wc -c < "$log")
    if [ "$size" -gt "$seen" ]; then
        tail -c "+$((seen + 1))" "$log" | head -c "$((size - seen))"
        seen=$size
    fi
}
nap() { sleep 0.2 2>/dev/null || sleep 1; }
agent_pid() {  # the agent, once the script runs it: a "python -m agent" of the session
    for d in /proc/[0-9]*; do
        { read -r st < "$d/stat"; } 2>/dev/null || continue
        # shellcheck disable=SC2086  # the fields after "(comm) ": state ppid pgrp session
        set -- ${st##*) }
        [ "${4:-}" = "$pid" ] || continue
        args=$(tr '\\0' ' ' < "$d/cmdline" 2>/dev/null)
        case "$args" in
            *" -m agent "*--enrol-only*) ;;
            *" -m agent "*) echo "${d#/proc/}"; return 0 ;;
        esac
    done
    return 1
}
n=0
while [ -z "$pid" ]; do
    [ -s "$work/pid" ] && pid=$(cat "$work/pid")
    n=$((n + 1)); [ $n -gt 100 ] && { say "the install did not start"; done_ 1; }
    nap
done
n=0
while :; do
    show
    n=$((n + 1))
    if [ $((n % 5)) = 0 ] && now=$(agent_pid); then
        sleep 1; show
        mv "$log" "$STATE/agent.log" 2>/dev/null || say "(the agent's log stays in $log)"
        rm -f "$work/pid" "$work/install.sh"
        rmdir "$work" 2>/dev/null
        work=""
        say "the agent runs (process $now); its log: $STATE/agent.log"
        say "without systemd nothing starts it again after a reboot: put it under a supervisor"
        done_ 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        nap; show
        rc=$(cat "$work/rc" 2>/dev/null || echo 1)
        say "the install script ended with exit status $rc"
        done_ "${rc:-1}"
    fi
    nap
done
"""

_DETACHED_UNINSTALL = """\
#!/bin/sh
# Overcast: disable monitoring: the install script's --uninstall, started on its own (it
# stops this agent, which would otherwise take its runs with it).
set -u
say() { echo "overcast monitoring: $*"; }
@ROOT@
script=$(mktemp) || exit 1
cat > "$script" <<'@EOF@'
@SCRIPT@
@EOF@
say "uninstalling the agent in two seconds: that stops this agent (the uninstall's output \
goes to $script.log, removed when it succeeds)"
run='s=$1; shift; rm -f "$s.wait"; sleep 2; if sh "$s" "$@"; then rm -f "$s.log"; fi; rm -f "$s"'
: > "$script.wait"
if command -v setsid >/dev/null 2>&1; then
    setsid sh -c "$run" sh "$script" @ARGS@ >"$script.log" 2>&1 </dev/null &
else
    nohup sh -c "$run" sh "$script" @ARGS@ >"$script.log" 2>&1 </dev/null &
fi
# the agent kills what a run leaves in its process group when it ends: wait until the
# uninstall is in a session of its own (it removes the mark then)
i=0
while [ -e "$script.wait" ] && [ $i -lt 50 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
exit 0
"""


def _marker(*texts: str) -> str:
    eof = f"OVERCAST_{secrets.token_hex(8)}"
    if any(eof in t for t in texts):  # never: the marker is random
        raise ValueError("the text holds the heredoc marker")
    return eof


def enable_script(install_command: str, opts: Options) -> bytes:
    """The wrapper that runs ``install_command`` (a join token's one-liner) with ``opts``."""
    command = " ".join([install_command, *(shlex.quote(a) for a in opts.args())])
    text = (_ENABLE.replace("@STATE@", shlex.quote(opts.state_dir or DEFAULT_STATE))
            .replace("@ROOT@", _ROOT).replace("@SHIM@", _SUDO_SHIM)
            .replace("@EOF@", _marker(command)).replace("@INSTALL@", command))
    return text.encode()


def uninstall_args(opts: Options) -> tuple[str, ...]:
    return ("--uninstall", *opts.dirs())


def detached_uninstall(script: bytes, opts: Options) -> bytes:
    """For a run through the agent: the install script (its text) run with --uninstall in a
    session of its own, two seconds after the run has answered."""
    text = script.decode().rstrip("\n")
    args = " ".join(shlex.quote(a) for a in uninstall_args(opts))
    return (_DETACHED_UNINSTALL.replace("@ROOT@", _ROOT).replace("@ARGS@", args)
            .replace("@EOF@", _marker(text)).replace("@SCRIPT@", text)).encode()
