"""The POSIX sh scripts that authorize or revoke a public key in a user's
~/.ssh/authorized_keys, for a caller to run on a machine (as root or as that user).

Nothing here blocks or touches the network: the scripts are built as text. ``parse_public_key``,
``authorize_script`` and ``revoke_script`` raise ValueError for a user name or key that is not
valid; every value is quoted into the script, never run by the caller's shell."""

from __future__ import annotations

import base64
import re
import shlex
import struct

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}[$]?$")
_KEY_TYPE = re.compile(r"^[a-z0-9][a-z0-9@.+-]{0,63}$")
_COMMENT = re.compile(r"^[^\x00-\x1f\x7f]*$")


def parse_public_key(public_key: str) -> tuple[str, str, str]:
    """(type, base64, comment) of one OpenSSH public key line; ValueError otherwise."""
    line = public_key.strip()
    parts = line.split(None, 2)
    if "\n" in line or "\r" in line or len(parts) < 2 or len(line) > 16384:
        raise ValueError("the public key must be one line: type base64 [comment]")
    kind, data, comment = parts[0], parts[1], (parts[2] if len(parts) > 2 else "")
    try:
        blob = base64.b64decode(data, validate=True)
        (size,) = struct.unpack(">I", blob[:4])
        inner = blob[4:4 + size]
    except (ValueError, struct.error):
        inner = b""
    if not _KEY_TYPE.match(kind) or inner != kind.encode():
        raise ValueError("the public key is not an OpenSSH public key (type base64 [comment])")
    if not _COMMENT.match(comment):
        raise ValueError("the public key's comment contains control characters")
    return kind, data, comment


_KEYS_HEAD = r'''
[ -n "$home" ] || if command -v getent >/dev/null 2>&1; then
  home=$(getent passwd "$user" | cut -d: -f6)
else
  home=$(eval "echo ~$user"); case $home in "~"*) home= ;; esac
fi
[ -n "$home" ] || { echo "overcast: there is no user $user here" >&2; exit 3; }
[ -d "$home" ] || { echo "overcast: the home directory $home of $user does not exist" >&2; exit 3; }
dir=$home/.ssh; file=$dir/authorized_keys; owner=
if [ "$(id -u)" = 0 ] && [ "$user" != root ]; then
  owner=$user:$(id -g "$user") || exit 1
  for p in "$dir" "$file"; do  # root must not follow a link the user planted
    [ ! -L "$p" ] || { echo "overcast: refusing to follow the symbolic link $p" >&2; exit 4; }
  done
fi
has_key() { [ -f "$file" ] && awk -v t="$kind" -v k="$data" '/^[ \t]*#/ {next}
  {for (i = 1; i < NF; i++) if ($i == t && $(i + 1) == k) f = 1} END {exit !f}' "$file"; }
'''

_AUTHORIZE = r'''
if has_key; then echo "overcast: the key is already authorized for $user"; exit 0; fi
if [ ! -d "$dir" ]; then
  (umask 077 && mkdir "$dir") || exit 1
  [ -z "$owner" ] || chown "$owner" "$dir" || exit 1
fi
if [ ! -f "$file" ]; then
  (umask 077 && : > "$file") || exit 1
  [ -z "$owner" ] || chown "$owner" "$file" || exit 1
elif [ -s "$file" ] && [ -n "$(tail -c 1 "$file")" ]; then
  echo >> "$file" || exit 1  # the last line has no newline
fi
printf '%s\n' "$line" >> "$file" || exit 1
echo "overcast: key authorized for $user"
'''

_REVOKE = r'''
if ! has_key; then echo "overcast: the key was not authorized for $user"; exit 0; fi
tmp=$(mktemp "$dir/.authorized_keys.XXXXXX") || exit 1
awk -v t="$kind" -v k="$data" '/^[ \t]*#/ {print; next}
  {for (i = 1; i < NF; i++) if ($i == t && $(i + 1) == k) next; print}' "$file" > "$tmp" &&
  cat "$tmp" > "$file"  # rewritten in place: owner, mode, links and labels stay
status=$?; rm -f "$tmp"; [ $status = 0 ] || exit 1
echo "overcast: key revoked for $user"
'''


def _keys_script(body: str, user: str, public_key: str, home: str | None) -> str:
    if not _USER.match(user):
        raise ValueError(f"{user!r} is not a valid user name")
    kind, data, comment = parse_public_key(public_key)
    line = f"{kind} {data} {comment}".rstrip()
    values = {"user": user, "kind": kind, "data": data, "line": line, "home": home or ""}
    head = "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    return "#!/bin/sh\n# overcast: authorized_keys\nset -u\n" + head + _KEYS_HEAD + body


def authorize_script(user: str, public_key: str, home: str | None = None) -> str:
    """POSIX sh (run as root or as ``user``) adding ``public_key`` to ~user/.ssh/
    authorized_keys unless a line with its type and base64 is already there; creates .ssh
    (0700) and the file (0600) owned by the user. ``home`` overrides the home directory
    (else getent passwd). Exit 0 done, 3 no such user/home, 4 a link refused, 1 failed.
    ValueError for a user name or key that is not valid."""
    return _keys_script(_AUTHORIZE, user, public_key, home)


def revoke_script(user: str, public_key: str, home: str | None = None) -> str:
    """POSIX sh removing every line with ``public_key``'s type and base64 from ~user/.ssh/
    authorized_keys; other lines and comments stay. Exit codes as authorize_script's."""
    return _keys_script(_REVOKE, user, public_key, home)
