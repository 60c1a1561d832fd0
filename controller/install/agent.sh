#!/bin/sh
# Overcast agent: install it on this host (Debian/Ubuntu or RHEL-family; x86_64 or aarch64)
# into a virtual environment of its own, from the package the controller serves, enrol it
# with a join token, and run it: a systemd unit, or in the foreground where systemd is not
# running (containers) or with --foreground. Re-running it upgrades in place, keeping the
# identity; --uninstall removes everything it added.
#
#   curl -fsSL CONTROLLER/install/agent.sh | sudo sh -s -- --token TOKEN --ca-fingerprint sha256:HEX
#
#   --token TOKEN           a join token (not needed once this host is enrolled)
#   --ca-fingerprint FP     sha256:HEX of the controller's CA (not needed once enrolled)
#   --controller URL        the controller (default: the one that served this script)
#   --name NAME             the name to enrol under (default: this host's name)
#   --interval SECONDS      seconds between metric samples (default: the controller's)
#   --user                  run as the unprivileged user overcast-agent (default: root)
#   --prefix DIR            the virtual environment (default /opt/overcast-agent)
#   --config-dir DIR        where agent.toml goes (default /etc/overcast)
#   --state-dir DIR         identity and spool (default /var/lib/overcast-agent)
#   --memory-max SIZE       systemd MemoryMax (default 1G; 256M with --user)
#   --tasks-max N           systemd TasksMax (default 1024; 256 with --user)
#   --foreground            run the agent here, in the foreground, instead of a unit
#   --python PATH           the Python (3.11 or newer) to make the environment with
#   --os-release FILE       read the platform from FILE, not /etc/os-release (tests)
#   --print-unit            print the systemd unit this would install, and exit
#   --uninstall             remove what this script added (asks the controller nothing)
#
# Exit codes: 0 done; 1 failed; 2 usage; 3 the controller refused the join token; 4 the
# controller's CA does not match the fingerprint; 5 the controller cannot be reached;
# 6 this platform is not supported. A failed run leaves nothing of its own behind.
set -eu

CONTROLLER="@OVERCAST_CONTROLLER_URL@"
TOKEN="" FINGERPRINT="" NAME="" INTERVAL="" AS_USER=0
PREFIX="/opt/overcast-agent" CONFIG_DIR="/etc/overcast" STATE="/var/lib/overcast-agent"
MEMORY_MAX="" TASKS_MAX="" FOREGROUND=0 PYTHON="" OS_RELEASE="/etc/os-release"
PRINT_UNIT=0 UNINSTALL=0
UNIT_NAME="overcast-agent.service" UNIT_DIR="/etc/systemd/system" SERVICE_USER="overcast-agent"

say() { echo "overcast agent install: $*" >&2; }
die() { code=$1; shift; say "$*"; exit "$code"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --token) TOKEN=${2:-}; shift 2 ;;
        --ca-fingerprint) FINGERPRINT=${2:-}; shift 2 ;;
        --controller) CONTROLLER=${2:-}; shift 2 ;;
        --name) NAME=${2:-}; shift 2 ;;
        --interval) INTERVAL=${2:-}; shift 2 ;;
        --user) AS_USER=1; shift ;;
        --prefix) PREFIX=${2:-}; shift 2 ;;
        --config-dir) CONFIG_DIR=${2:-}; shift 2 ;;
        --state-dir) STATE=${2:-}; shift 2 ;;
        --memory-max) MEMORY_MAX=${2:-}; shift 2 ;;
        --tasks-max) TASKS_MAX=${2:-}; shift 2 ;;
        --foreground) FOREGROUND=1; shift ;;
        --python) PYTHON=${2:-}; shift 2 ;;
        --os-release) OS_RELEASE=${2:-}; shift 2 ;;
        --print-unit) PRINT_UNIT=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) sed -n '2,30p' "$0" 2>/dev/null || echo "see the controller's README" >&2; exit 0 ;;
        *) die 2 "unknown argument: $1 (see --help)" ;;
    esac
done

for d in "$PREFIX" "$CONFIG_DIR" "$STATE"; do
    case "$d" in
        *[!A-Za-z0-9_./+-]*) die 2 "$d: paths may have letters, digits and _ . / + - only" ;;
        /?*) ;;
        *) die 2 "--prefix, --config-dir and --state-dir must be absolute paths" ;;
    esac
done
PREFIX=${PREFIX%/} CONFIG_DIR=${CONFIG_DIR%/} STATE=${STATE%/}
CONFIG="$CONFIG_DIR/agent.toml"
MANIFEST="$PREFIX/.overcast-install"
[ -n "$INTERVAL" ] && { case "$INTERVAL" in *[!0-9.]*|'') die 2 "--interval must be a number of seconds" ;; esac; }
if [ "$AS_USER" = 1 ]; then
    MEMORY_MAX=${MEMORY_MAX:-256M} TASKS_MAX=${TASKS_MAX:-256}
else
    MEMORY_MAX=${MEMORY_MAX:-1G} TASKS_MAX=${TASKS_MAX:-1024}
fi

# ---- the systemd unit ---------------------------------------------------------------------
# As root (the default) the agent runs scripts and shells that administer this host, as any
# user, and can be a tunnel gateway (network interfaces, forwarding, NAT): file-system and
# kernel protections would break exactly that, so its unit limits resources only. With
# --user it runs as overcast-agent, fenced in (read-only system, no privileges): it reports
# and runs scripts as itself, and upgrades itself (it owns its environment).
unit() {
    cat <<EOF
[Unit]
Description=Overcast agent
Documentation=$CONTROLLER
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart=$PREFIX/bin/python -m agent --config $CONFIG
Restart=on-failure
RestartSec=5
# 2: a bad configuration; 3: refused or revoked by the controller (enrol again)
RestartPreventExitStatus=2 3
# the scripts and shells the agent runs are in its control group: these count them too
MemoryMax=$MEMORY_MAX
TasksMax=$TASKS_MAX
LimitNOFILE=65536
UMask=0077
Environment=MALLOC_ARENA_MAX=1
EOF
    if [ "$AS_USER" = 1 ]; then
        cat <<EOF
User=$SERVICE_USER
Group=$SERVICE_USER
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$STATE $PREFIX
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
SystemCallArchitectures=native
EOF
    fi
    cat <<EOF

[Install]
WantedBy=multi-user.target
EOF
}

if [ "$PRINT_UNIT" = 1 ]; then
    unit
    exit 0
fi

# ---- what this run added, taken back when it fails -------------------------------------------
TMP="" DONE=0 ADDED="" USER_ADDED=0 DIRS_ADDED=""
added() { ADDED="$1
$ADDED"; }
mkdirs() {  # make a directory and its missing parents, noting each (--uninstall removes them)
    missing="" d=$1
    while [ ! -e "$d" ]; do missing="$d $missing"; d=$(dirname "$d"); done
    for d in $missing; do
        mkdir "$d" || die 1 "cannot make $d"
        added "$d"
        DIRS_ADDED="$DIRS_ADDED $d"
    done
}
rollback() {
    printf '%s\n' "$ADDED" | while IFS= read -r path; do
        [ -n "$path" ] && rm -rf "$path"
    done
    if [ "$USER_ADDED" = 1 ]; then userdel "$SERVICE_USER" >/dev/null 2>&1 || true; fi
}
on_exit() {
    rc=$?
    set +e  # clean up all there is to clean, and keep the exit code
    [ -n "$TMP" ] && rm -rf "$TMP"
    if [ "$DONE" != 1 ] && [ "$rc" != 0 ] && [ -n "$ADDED$USER_ADDED" ] && [ "$ADDED$USER_ADDED" != 0 ]; then
        rollback
        say "nothing was left installed"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

is_root() { [ "$(id -u)" = 0 ]; }

stop_foreground() {  # an agent an earlier run left in the foreground (its process id)
    pidfile="$STATE/agent.pid"
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    case "$pid" in *[!0-9]*|'') rm -f "$pidfile"; return 0 ;; esac
    if [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null && grep -q agent "/proc/$pid/cmdline" 2>/dev/null; then
        say "stopping the agent running in the foreground (process $pid)"
        kill "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# ---- uninstall ----------------------------------------------------------------------------
uninstall() {
    unit_file="$UNIT_DIR/$UNIT_NAME" dirs_added="" user_added=0 config_file="$CONFIG" state_dir="$STATE"
    if [ -s "$MANIFEST" ]; then
        grep -Eq "^[a-z_]+='[^']*'$" "$MANIFEST" || die 1 "$MANIFEST is not what this script writes"
        # shellcheck disable=SC1090
        . "$MANIFEST"
    fi
    if [ -f "$unit_file" ] && grep -q "$PREFIX/bin/python -m agent" "$unit_file"; then
        if has_systemd; then systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true; fi
        rm -f "$unit_file"
        if has_systemd; then systemctl daemon-reload || true; fi
        say "removed $unit_file"
    fi
    STATE=$state_dir
    stop_foreground
    for path in "$PREFIX" "$config_file" "$state_dir"; do
        if [ -e "$path" ]; then rm -rf "$path"; say "removed $path"; fi
    done
    innermost_first=""
    for d in $dirs_added; do innermost_first="$d $innermost_first"; done
    for d in $innermost_first; do rmdir "$d" 2>/dev/null || true; done  # only when empty
    if [ "$user_added" = 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" && say "removed the user $SERVICE_USER"
    fi
    say "uninstalled (the controller still lists this agent: revoke it there with 'overcast agent revoke ID')"
    exit 0
}

if [ "$UNINSTALL" = 1 ]; then
    is_root || [ -w "$(dirname "$PREFIX")" ] || die 1 "this needs root: run it with sudo"
    uninstall
fi

# ---- the platform -------------------------------------------------------------------------
if ! is_root; then
    if [ "$FOREGROUND" = 0 ] || [ "$PREFIX" = /opt/overcast-agent ] || [ "$CONFIG_DIR" = /etc/overcast ] ||
        [ "$STATE" = /var/lib/overcast-agent ]; then
        die 1 "this needs root: run it with sudo (or give --prefix, --config-dir and --state-dir you can write, and --foreground)"
    fi
fi
[ -r "$OS_RELEASE" ] || die 6 "cannot tell the platform: $OS_RELEASE is missing (supported: Debian, Ubuntu, RHEL and its family)"
os_id=$(sed -n 's/^ID=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
os_like=$(sed -n 's/^ID_LIKE=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
os_name=$(sed -n 's/^PRETTY_NAME=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
FAMILY=""
for word in $os_id $os_like; do
    case "$word" in
        debian|ubuntu) FAMILY=debian; break ;;
        rhel|centos|fedora|rocky|almalinux|ol|amzn) FAMILY=rhel; break ;;
    esac
done
[ -n "$FAMILY" ] || die 6 "${os_name:-$os_id} is not supported: the agent installs on Debian, Ubuntu and RHEL-family systems (RHEL, Rocky, AlmaLinux, CentOS Stream, Fedora, Oracle Linux, Amazon Linux); nothing was installed"
case "$(uname -m)" in
    x86_64|amd64) ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) die 6 "the $(uname -m) architecture is not supported (x86_64 and aarch64 are); nothing was installed" ;;
esac
for t in sed tr cut base64 sha256sum mktemp; do
    command -v "$t" >/dev/null 2>&1 || die 1 "please install $t (coreutils)"
done

pkg_install() {
    is_root || die 1 "please install $* (this needs root)"
    say "installing $* ($FAMILY packages)"
    if [ "$FAMILY" = debian ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 ||
            { apt-get update -q </dev/null >&2 && apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; } ||
            die 1 "apt-get could not install $*"
    else
        dnf install -y -q "$@" </dev/null >&2 || die 1 "dnf could not install $*"
    fi
}

command -v curl >/dev/null 2>&1 || pkg_install curl

find_python() {
    for p in ${PYTHON:-python3.13 python3.12 python3.11 python3}; do
        path=$(command -v "$p" 2>/dev/null) || continue
        if "$path" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' </dev/null 2>/dev/null; then
            PY=$path
            return 0
        fi
    done
    [ -z "$PYTHON" ] || die 6 "$PYTHON is missing or older than Python 3.11, which the agent needs"
    return 1
}
PY=""
if ! find_python; then
    if [ "$FAMILY" = debian ]; then pkg_install python3.11 python3.11-venv; else pkg_install python3.11; fi
    find_python || die 6 "the agent needs Python 3.11 or newer, and none could be installed here"
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' </dev/null)
if ! "$PY" -c 'import venv, ensurepip' </dev/null >/dev/null 2>&1; then
    if [ "$FAMILY" = debian ]; then pkg_install "python$pyver-venv"; else pkg_install python3-pip; fi
    "$PY" -c 'import venv, ensurepip' </dev/null >/dev/null 2>&1 ||
        die 1 "$PY cannot make virtual environments (its venv or ensurepip module is missing)"
fi
say "$os_name on $ARCH, Python $pyver ($PY)"

# ---- the controller -----------------------------------------------------------------------
CONTROLLER=${CONTROLLER%/}
case "$CONTROLLER" in
    https://*|http://*) ;;
    *) die 2 "--controller must be an http(s):// URL" ;;
esac
ENROLLED=0
[ -s "$STATE/agent.json" ] && grep -q '"agent_id": "[0-9a-f]' "$STATE/agent.json" && ENROLLED=1
[ "$ENROLLED" = 1 ] || [ -n "$TOKEN" ] || die 2 "--token TOKEN is required (this host is not enrolled yet): make one with 'overcast token join create'"
TMP=$(mktemp -d)
k=""
case "$CONTROLLER" in https://*) k="-k" ;; esac
# ca.pem is fetched without verification, then trusted only if it matches the pin (or, when
# re-run without one, the CA this host enrolled with)
curl -fsS $k --max-time 20 "$CONTROLLER/ca.pem" -o "$TMP/ca.pem" 2>"$TMP/curl.err" ||
    die 5 "cannot reach the controller at $CONTROLLER ($(tail -n 1 "$TMP/curl.err")); nothing was installed"
fp() { sed '/-----/d' "$1" | tr -d '\r\n' | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1; }
got=$(fp "$TMP/ca.pem")
if [ -n "$FINGERPRINT" ]; then
    want=$(echo "${FINGERPRINT#sha256:}" | tr 'A-F' 'a-f' | tr -d ':')
elif [ "$ENROLLED" = 1 ] && [ -s "$STATE/ca.pem" ]; then
    want=$(fp "$STATE/ca.pem")
else
    die 2 "--ca-fingerprint sha256:HEX is required (it is in the join command)"
fi
[ "$got" = "$want" ] ||
    die 4 "the controller's CA certificate (sha256:$got) does not match the fingerprint (sha256:$want): not trusting it; nothing was installed"
CURL="curl -fsS --max-time 120"
case "$CONTROLLER" in
    https://*)
        if $CURL --cacert "$TMP/ca.pem" -o /dev/null "$CONTROLLER/api/v2/health" 2>/dev/null; then
            CURL="$CURL --cacert $TMP/ca.pem"
        fi ;;  # else a certificate the operator got from a public CA: the system's trust
    http://*) say "warning: the controller is plain http: use https outside a lab" ;;
esac
fetch() {  # fetch URL FILE: an HTTP error is the controller's answer (1); else unreachable (5)
    rc=0
    $CURL "$1" -o "$2" 2>"$TMP/curl.err" || rc=$?
    case "$rc" in
        0) ;;
        22) die 1 "$1: $(tail -n 1 "$TMP/curl.err")" ;;
        *) die 5 "cannot reach the controller at $CONTROLLER ($(tail -n 1 "$TMP/curl.err"))" ;;
    esac
}
fetch "$CONTROLLER/install/agent.json?format=shell" "$TMP/package.env"
grep -E "^OC_[A-Z0-9_]+='[^']*'$" "$TMP/package.env" > "$TMP/package.ok" || die 1 "the controller's answer is not what this script expects"
OC_VERSION="" OC_PACKAGE="" OC_PACKAGE_URL="" OC_SHA256="" OC_FIND_LINKS="" OC_WHEELS=0
# shellcheck disable=SC1091
. "$TMP/package.ok"
fetch "$CONTROLLER$OC_PACKAGE_URL" "$TMP/$OC_PACKAGE"
[ "$(sha256sum "$TMP/$OC_PACKAGE" | cut -d' ' -f1)" = "$OC_SHA256" ] ||
    die 1 "the downloaded package does not have the SHA-256 the controller announced"

# ---- the virtual environment ------------------------------------------------------------------
if [ -s "$MANIFEST" ] && grep -Eq "^[a-z_]+='[^']*'$" "$MANIFEST"; then
    dirs_added="" user_added=0
    # shellcheck disable=SC1090
    . "$MANIFEST"
    DIRS_ADDED=$dirs_added PREV_USER_ADDED=$user_added
else
    PREV_USER_ADDED=0
fi
if [ -x "$PREFIX/bin/python" ] && "$PREFIX/bin/python" -c 'import pip' </dev/null >/dev/null 2>&1; then
    say "upgrading the agent in $PREFIX to $OC_VERSION"
else
    mkdirs "$(dirname "$PREFIX")"
    [ -e "$PREFIX" ] || added "$PREFIX"
    "$PY" -m venv "$PREFIX" </dev/null >&2 || die 1 "cannot make a virtual environment in $PREFIX"
    # Python 3.11's venv brings setuptools too (9 MB): nothing of the agent's needs it
    "$PREFIX/bin/python" -m pip uninstall -q -y setuptools </dev/null >/dev/null 2>&1 || true
    say "installing the agent $OC_VERSION into $PREFIX"
fi
PIP="$PREFIX/bin/python -m pip --disable-pip-version-check --no-input --no-cache-dir -q install"
links="$CONTROLLER$OC_FIND_LINKS"
case "$CONTROLLER" in
    http://*) hostport=${CONTROLLER#http://}; reach="--find-links $links --trusted-host ${hostport%%/*}"
              bundle_opt="$reach" ;;
    *) reach="--find-links $links"; bundle_opt="$reach"
       case "$CURL" in
           *--cacert*)
               reach="$reach --cert $TMP/ca.pem"
               for b in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
                   if [ -r "$b" ]; then cat "$b" "$TMP/ca.pem" > "$TMP/trust.pem"; break; fi
               done
               [ -s "$TMP/trust.pem" ] || cp "$TMP/ca.pem" "$TMP/trust.pem"
               bundle_opt="$bundle_opt --cert $TMP/trust.pem" ;;
       esac ;;
esac
wheel="$TMP/$OC_PACKAGE"
# the controller's wheels alone when they have every dependency for this platform (no
# package index needed), else the package index with the controller's wheels beside it
# shellcheck disable=SC2086
if [ "${OC_WHEELS:-0}" -gt 0 ] && $PIP --no-index $reach "$wheel" </dev/null >"$TMP/pip.log" 2>&1; then
    say "dependencies installed from the controller's wheels"
elif $PIP $bundle_opt "$wheel" </dev/null >>"$TMP/pip.log" 2>&1; then
    say "dependencies installed from the package index"
else
    tail -n 15 "$TMP/pip.log" >&2
    die 1 "pip could not install the agent or its dependencies (above); the controller can serve them to hosts without the package index: 'overcast agent wheels fetch' there"
fi
# the same version may be installed already (files changed by hand): these files win
$PIP --no-deps --force-reinstall "$wheel" </dev/null >>"$TMP/pip.log" 2>&1 ||
    { tail -n 15 "$TMP/pip.log" >&2; die 1 "pip could not reinstall the agent"; }

# ---- configuration, enrolment, user -----------------------------------------------------------
mkdirs "$CONFIG_DIR"
[ -e "$CONFIG" ] || added "$CONFIG"
set -- controller="$CONTROLLER" state_dir="$STATE"
[ -n "$INTERVAL" ] && set -- "$@" interval="$INTERVAL"
[ -n "$NAME" ] && set -- "$@" hostname="$NAME"
[ -n "$FINGERPRINT" ] && set -- "$@" ca_fingerprint="sha256:$want"
"$PREFIX/bin/python" -m agent.config write "$CONFIG" "$@" </dev/null || die 1 "cannot write $CONFIG"
if [ "$ENROLLED" = 1 ]; then
    say "already enrolled as $(sed -n 's/.*"agent_id": "\([0-9a-f]*\)".*/\1/p' "$STATE/agent.json"): keeping this identity"
else
    mkdirs "$(dirname "$STATE")"
    [ -e "$STATE" ] || added "$STATE"
    rc=0
    "$PREFIX/bin/python" -m agent --config "$CONFIG" --token "$TOKEN" --ca-fingerprint "sha256:$want" \
        --enrol-only </dev/null || rc=$?
    case "$rc" in
        0) ;;
        3) die 3 "the controller refused the join token (above): make a new one with 'overcast token join create'" ;;
        5) die 5 "cannot reach the controller to enrol (above)" ;;
        *) die 1 "enrolment failed (exit $rc)" ;;
    esac
fi
USER_ADDED=0
if [ "$AS_USER" = 1 ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir "$STATE" --shell /usr/sbin/nologin "$SERVICE_USER" ||
            die 1 "cannot add the user $SERVICE_USER"
        USER_ADDED=1
    fi
    chown -R "$SERVICE_USER:" "$STATE" "$PREFIX"
    chgrp "$SERVICE_USER" "$CONFIG" && chmod 640 "$CONFIG"
fi
[ "$PREV_USER_ADDED" = 1 ] && user_was=1 || user_was=$USER_ADDED
unit_file=""
if [ "$FOREGROUND" = 0 ] && has_systemd; then unit_file="$UNIT_DIR/$UNIT_NAME"; fi
{
    echo "config_file='$CONFIG'"
    echo "dirs_added='$DIRS_ADDED'"
    echo "state_dir='$STATE'"
    echo "unit_file='${unit_file:-$UNIT_DIR/$UNIT_NAME}'"
    echo "user_added='$user_was'"
} > "$MANIFEST"
agent_id=$(sed -n 's/.*"agent_id": "\([0-9a-f]*\)".*/\1/p' "$STATE/agent.json")
RUN="$PREFIX/bin/python -m agent --config $CONFIG"

# ---- run it ---------------------------------------------------------------------------------
if [ -n "$unit_file" ]; then
    [ -e "$unit_file" ] || added "$unit_file"
    unit > "$unit_file"
    systemctl daemon-reload
    systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || die 1 "systemctl could not enable $UNIT_NAME"
    systemctl restart "$UNIT_NAME" || die 1 "the agent did not start: journalctl -u $UNIT_NAME"
    DONE=1
    say "agent $agent_id installed ($OC_VERSION) and running: $UNIT_NAME"
    say "check it: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME -f; on the controller: overcast agent show $agent_id"
    exit 0
fi
DONE=1
[ "$FOREGROUND" = 1 ] || say "no systemd here (it is not process 1): running the agent in the foreground"
say "agent $agent_id installed ($OC_VERSION); under a supervisor of your own, run: $RUN"
say "check it on the controller: overcast agent show $agent_id"
stop_foreground
rm -rf "$TMP"
TMP=""
trap - EXIT INT TERM
echo "$$" > "$STATE/agent.pid"
if [ "$AS_USER" = 1 ]; then
    chown "$SERVICE_USER:" "$STATE/agent.pid"
    exec runuser -u "$SERVICE_USER" -- "$PREFIX/bin/python" -m agent --config "$CONFIG" </dev/null
fi
exec "$PREFIX/bin/python" -m agent --config "$CONFIG" </dev/null
