#!/bin/sh
# `make run`: a controller on embedded defaults under .run/, with an admin account.
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
run="$root/.run"
mkdir -p "$run"
chmod 700 "$run"
export OVERCAST_DATA_DIR="${OVERCAST_DATA_DIR:-$run/data}"
export OVERCAST_CONFIG="${OVERCAST_CONFIG:-$run/controller.toml}"
export OVERCAST_HTTP="${OVERCAST_HTTP:-127.0.0.1:7080}"
export OVERCAST_GRPC="${OVERCAST_GRPC:-127.0.0.1:7443}"
[ -f "$OVERCAST_CONFIG" ] || printf '# Overcast controller settings (see README: Settings)\n' > "$OVERCAST_CONFIG"
overcast="$root/.venv/bin/overcast"
email="${OVERCAST_ADMIN_EMAIL:-admin@example.com}"
pwfile="$run/admin-password"
if [ ! -f "$pwfile" ]; then
    umask 077
    "$root/.venv/bin/python" -c "import secrets; print(secrets.token_urlsafe(12))" > "$pwfile"
    "$overcast" adduser "$email" --admin --org "Default" --password-stdin < "$pwfile"
fi
cat <<MSG

  Overcast controller
    URL:      http://$OVERCAST_HTTP
    e-mail:   $email
    password: $(cat "$pwfile")   (kept in $pwfile)
    CLI:      .venv/bin/overcast login http://$OVERCAST_HTTP --email $email

MSG
exec "$overcast" controller
