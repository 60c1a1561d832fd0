#!/bin/sh
# `make run`: a controller on embedded defaults under .run/, with an admin account, and a
# local agent enrolled to it (state in .run/agent). Ctrl-C stops both.
# The admin password is kept in .run/admin-password only once `overcast adduser` took it, so
# the password printed is always one that works (or none, said plainly).
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
run="${OVERCAST_RUN_DIR:-$root/.run}"
mkdir -p "$run"
chmod 700 "$run"
export OVERCAST_DATA_DIR="${OVERCAST_DATA_DIR:-$run/data}"
export OVERCAST_CONFIG="${OVERCAST_CONFIG:-$run/controller.toml}"
export OVERCAST_HTTP="${OVERCAST_HTTP:-127.0.0.1:7080}"
export OVERCAST_GRPC="${OVERCAST_GRPC:-127.0.0.1:7443}"
export OVERCAST_AGENTS="${OVERCAST_AGENTS:-127.0.0.1:7444}"
[ -f "$OVERCAST_CONFIG" ] || printf '# Overcast controller settings (see README: Settings)\n' > "$OVERCAST_CONFIG"
overcast="$root/.venv/bin/overcast"
email="${OVERCAST_ADMIN_EMAIL:-admin@example.com}"
pwfile="$run/admin-password"
password_line="password: $(cat "$pwfile" 2>/dev/null || true)   (kept in $pwfile)"
if [ ! -f "$pwfile" ]; then
    umask 077
    tmp="$pwfile.tmp"
    "$root/.venv/bin/python" -c "import secrets; print(secrets.token_urlsafe(12))" > "$tmp"
    if out="$("$overcast" adduser "$email" --admin --org "Default" --password-stdin < "$tmp" 2>&1)"; then
        [ -z "$out" ] || echo "$out"
        mv "$tmp" "$pwfile"  # only now: this password works
        password_line="password: $(cat "$pwfile")   (kept in $pwfile)"
    else
        rm -f "$tmp"
        case "$out" in
            *"a user with that e-mail exists"*)
                echo "make run: the admin $email already exists in $OVERCAST_DATA_DIR, but its" >&2
                echo "  password is not in $pwfile (it was made another way): use the password" >&2
                echo "  you gave it, or remove $OVERCAST_DATA_DIR to start afresh." >&2
                password_line="password: (unknown: not in $pwfile; see above)"
                ;;
            *)
                echo "$out" >&2
                echo "make run: could not create the admin account $email (above); nothing was saved" >&2
                exit 1
                ;;
        esac
    fi
fi
cat <<MSG

  Overcast controller
    URL:      http://$OVERCAST_HTTP
    e-mail:   $email
    $password_line
    CLI:      .venv/bin/overcast login http://$OVERCAST_HTTP --email $email
    agent:    a local agent reports this host (state in $run/agent; log in $run/agent.log)

MSG
"$overcast" controller &
ctl=$!
agent=""
stop() {
    [ -z "$agent" ] || kill "$agent" 2>/dev/null || true
    kill "$ctl" 2>/dev/null || true
}
trap stop INT TERM
if [ "${OVERCAST_RUN_AGENT:-1}" = 1 ] && \
   "$root/.venv/bin/python" "$root/packaging/dev/local_agent.py" "http://$OVERCAST_HTTP" "$email" \
       "$pwfile" "$run/agent" "$overcast"; then
    "$overcast" agent --state-dir "$run/agent" >> "$run/agent.log" 2>&1 &
    agent=$!
fi
status=0
wait "$ctl" || status=$?
if [ "$status" -gt 128 ]; then
    # a signal interrupted the wait: the trap asked the controller to stop; its own exit
    # status (0 after a clean shutdown) is what this script reports
    status=0
    wait "$ctl" || status=$?
fi
stop
wait 2>/dev/null || true
exit "$status"
