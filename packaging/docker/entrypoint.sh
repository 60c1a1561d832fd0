#!/bin/sh
# Entrypoint of the Overcast controller image (POSIX sh).
#
#   (no arguments), "controller [FLAGS]" or just "FLAGS": run `overcast controller FLAGS`;
#   anything else, e.g. "adduser ...": run `overcast ...` (one-off commands).
#
# Before the controller starts, when OVERCAST_ADMIN_EMAIL is set, `overcast controller --init`
# prepares the data directory and makes the first admin: only when no user exists yet, so it
# runs on every start and changes nothing once done. Variables read here (not settings):
#   OVERCAST_ADMIN_EMAIL          the first admin's e-mail
#   OVERCAST_ADMIN_PASSWORD_FILE  a file holding their password (a Docker/Kubernetes secret)
#   OVERCAST_ADMIN_ORG            their organisation's name (default: after the e-mail)
#   OVERCAST_SECRET_KEY_FILE      a file holding the secret key (base64 of 32 bytes): becomes
#                                 the secret_key setting (OVERCAST_SECRET_KEY)
# All other OVERCAST_* variables are settings, read by the controller itself.
set -eu

fail() {
    echo "overcast-entrypoint: $*" >&2
    exit 2
}

if [ -n "${OVERCAST_SECRET_KEY_FILE:-}" ]; then
    [ -z "${OVERCAST_SECRET_KEY:-}" ] ||
        fail "set OVERCAST_SECRET_KEY or OVERCAST_SECRET_KEY_FILE, not both"
    [ -r "$OVERCAST_SECRET_KEY_FILE" ] ||
        fail "OVERCAST_SECRET_KEY_FILE: cannot read $OVERCAST_SECRET_KEY_FILE"
    # $(...) drops the file's trailing newline
    OVERCAST_SECRET_KEY="$(cat "$OVERCAST_SECRET_KEY_FILE")"
    [ -n "$OVERCAST_SECRET_KEY" ] || fail "OVERCAST_SECRET_KEY_FILE: $OVERCAST_SECRET_KEY_FILE is empty"
    export OVERCAST_SECRET_KEY
fi
unset OVERCAST_SECRET_KEY_FILE

case "${1:-}" in
    "" | -*) set -- controller "$@" ;;
esac

if [ "$1" = controller ]; then
    shift
    if [ -n "${OVERCAST_ADMIN_EMAIL:-}" ]; then
        [ -n "${OVERCAST_ADMIN_PASSWORD_FILE:-}" ] ||
            fail "OVERCAST_ADMIN_EMAIL needs OVERCAST_ADMIN_PASSWORD_FILE (a file with the password)"
        [ -r "$OVERCAST_ADMIN_PASSWORD_FILE" ] ||
            fail "OVERCAST_ADMIN_PASSWORD_FILE: cannot read $OVERCAST_ADMIN_PASSWORD_FILE"
        # the controller's own flags too: --init prepares what the controller will use
        if [ -n "${OVERCAST_ADMIN_ORG:-}" ]; then
            overcast controller --init "$@" --admin-email "$OVERCAST_ADMIN_EMAIL" \
                --admin-password-file "$OVERCAST_ADMIN_PASSWORD_FILE" --org "$OVERCAST_ADMIN_ORG"
        else
            overcast controller --init "$@" --admin-email "$OVERCAST_ADMIN_EMAIL" \
                --admin-password-file "$OVERCAST_ADMIN_PASSWORD_FILE"
        fi
    fi
    unset OVERCAST_ADMIN_EMAIL OVERCAST_ADMIN_PASSWORD_FILE OVERCAST_ADMIN_ORG
    # exec: the controller is PID 1's replacement and gets SIGTERM from `docker stop` itself
    exec overcast controller "$@"
fi

exec overcast "$@"
