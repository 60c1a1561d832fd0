#!/bin/sh
# Overcast agent: install it on this host, enrol it with a join token, and run it.
# What it does and its options: usage() below (sh agent.sh --help, or
# curl -fsSL CONTROLLER/install/agent.sh | sh -s -- --help).
set -eu
umask 022

CONTROLLER="@OVERCAST_CONTROLLER_URL@"

usage() {
    cat <<'EOF'
usage: curl -fsSL CONTROLLER/install/agent.sh | sudo sh -s -- --token TOKEN --ca-fingerprint sha256:HEX [OPTION...]

Installs the Overcast agent on this host (Debian/Ubuntu or RHEL-family; x86_64 or aarch64)
into a virtual environment of its own, from the package the controller serves; enrols it
with a join token; and runs it as the systemd unit overcast-agent.service. Without systemd
(containers) it says so and prints the command to run the agent under a supervisor of your
own (--foreground: runs it here, in the foreground). Run again, it upgrades in place,
keeping the identity and the options given before; --uninstall removes what it added.

  --token TOKEN          a join token (not needed once this host is enrolled)
  --ca-fingerprint FP    sha256:HEX of the controller's CA (not needed once enrolled)
  --controller URL       the controller (default: the one that served this script)
  --name NAME            the name to enrol under (default: this host's name)
  --interval SECONDS     seconds between metric samples (default: the controller's)
  --user                 run as the unprivileged user overcast-agent (default: root)
  --root                 run as root (after an install with --user)
  --prefix DIR           the virtual environment (default /opt/overcast-agent)
  --config-dir DIR       agent.toml and the install record (default /etc/overcast)
  --state-dir DIR        identity and spool (default /var/lib/overcast-agent)
  --memory-max SIZE      systemd MemoryMax (default 1G; 256M with --user)
  --tasks-max N          systemd TasksMax (default 1024; 256 with --user)
  --foreground           run the agent here, in the foreground, instead of a unit
  --python PATH          the Python (3.11 or newer) to make the environment with
  --print-unit           print the systemd unit this would install, and exit
  --uninstall            remove what this script added (asks the controller nothing)
  -h, --help             this text
for tests and special hosts:
  --os-release FILE      read the platform from FILE, not /etc/os-release
  --unit-dir DIR         where the unit goes (default /etc/systemd/system)
  --systemd-dir DIR      systemd runs when DIR exists (default /run/systemd/system)

The install record, CONFIG_DIR/agent-install.record (root's, mode 0600), says what the
script added (--uninstall removes that and nothing else) and the options it was given: a
re-run uses them again unless given anew (--root undoes --user).

Exit codes: 0 done; 1 failed; 2 usage; 3 the controller refused the join token; 4 the
controller's CA does not match the fingerprint; 5 the controller cannot be reached;
6 this platform is not supported. A failed run leaves nothing of its own behind, and a
failed re-run leaves the earlier install as it was.
EOF
}

say() { echo "overcast agent install: $*" >&2; }
die() { code=$1; shift; say "$*"; exit "$code"; }
need() { [ $# -ge 2 ] || die 2 "$1 needs a value (see --help)"; }

TOKEN="" FINGERPRINT="" OPT_CONTROLLER="" OPT_NAME="" OPT_INTERVAL="" OPT_USER=""
OPT_PREFIX="" CONFIG_DIR="/etc/overcast" OPT_STATE="" OPT_MEMORY_MAX="" OPT_TASKS_MAX=""
FOREGROUND=0 PYTHON="" OS_RELEASE="/etc/os-release" PRINT_UNIT=0 UNINSTALL=0
UNIT_DIR="/etc/systemd/system" SYSTEMD_DIR="/run/systemd/system"
UNIT_NAME="overcast-agent.service" SERVICE_USER="overcast-agent"

while [ $# -gt 0 ]; do
    case "$1" in
        --token) need "$@"; TOKEN=$2; shift 2 ;;
        --ca-fingerprint) need "$@"; FINGERPRINT=$2; shift 2 ;;
        --controller) need "$@"; OPT_CONTROLLER=$2; shift 2 ;;
        --name) need "$@"; OPT_NAME=$2; shift 2 ;;
        --interval) need "$@"; OPT_INTERVAL=$2; shift 2 ;;
        --user) OPT_USER=1; shift ;;
        --root) OPT_USER=0; shift ;;
        --prefix) need "$@"; OPT_PREFIX=$2; shift 2 ;;
        --config-dir) need "$@"; CONFIG_DIR=$2; shift 2 ;;
        --state-dir) need "$@"; OPT_STATE=$2; shift 2 ;;
        --memory-max) need "$@"; OPT_MEMORY_MAX=$2; shift 2 ;;
        --tasks-max) need "$@"; OPT_TASKS_MAX=$2; shift 2 ;;
        --foreground) FOREGROUND=1; shift ;;
        --python) need "$@"; PYTHON=$2; shift 2 ;;
        --os-release) need "$@"; OS_RELEASE=$2; shift 2 ;;
        --unit-dir) need "$@"; UNIT_DIR=$2; shift 2 ;;
        --systemd-dir) need "$@"; SYSTEMD_DIR=$2; shift 2 ;;
        --print-unit) PRINT_UNIT=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die 2 "unknown argument: $1 (see --help)" ;;
    esac
done

# ---- values: what the options and the install record may hold -------------------------------
valid() {  # valid KIND VALUE: whether VALUE is a well-formed KIND
    case "$1" in
        path)  # absolute, plain: no spaces, quotes, globs, "." or ".." parts
            case "$2" in
                *[!A-Za-z0-9_./+-]*|*//*|*/./*|*/.|*/../*|*/..) return 1 ;;
                /?*) return 0 ;;
            esac
            return 1 ;;
        paths)
            case "$2" in *[!A-Za-z0-9_./+\ -]*) return 1 ;; esac
            for w in $2; do valid path "$w" || return 1; done ;;
        bool) case "$2" in 0|1) ;; *) return 1 ;; esac ;;
        hex) case "$2" in *[!0-9a-f]*|'') return 1 ;; esac ;;
        fingerprint) valid hex "$2" && [ ${#2} = 64 ] ;;
        token) case "$2" in *[!A-Za-z0-9_-]*|'') return 1 ;; esac ;;
        name) case "$2" in *[!A-Za-z0-9_.-]*|'') return 1 ;; esac; [ ${#2} -le 253 ] ;;
        seconds) case "$2" in *[!0-9.]*|''|.|*.*.*) return 1 ;; esac ;;
        size) [ "$2" = infinity ] && return 0
              case "${2%[KMGT%]}" in *[!0-9]*|'') return 1 ;; esac ;;
        count) [ "$2" = infinity ] && return 0
               case "${2%[%]}" in *[!0-9]*|'') return 1 ;; esac ;;
        url) case "$2" in *[!]A-Za-z0-9.:/_[-]*) return 1 ;; https://?*|http://?*) ;; *) return 1 ;; esac ;;
        packages) case "$2" in *[!a-z0-9.+\ -]*) return 1 ;; esac ;;
        family) case "$2" in debian|rhel|'') ;; *) return 1 ;; esac ;;
        *) return 1 ;;
    esac
}
check() { valid "$1" "$2" || die 2 "$3"; }  # check KIND VALUE MESSAGE

dirs_message="must be absolute paths of letters, digits and _ . / + - only (no . or .. parts)"
for opt in "--prefix $OPT_PREFIX" "--config-dir $CONFIG_DIR" "--state-dir $OPT_STATE" \
           "--unit-dir $UNIT_DIR" "--systemd-dir $SYSTEMD_DIR"; do
    d=${opt#* }  # "" when not given (--config-dir "" and such are no directories)
    case "$opt" in --prefix\ |--state-dir\ ) continue ;; esac
    valid path "${d%/}" || die 2 "${d:-''}: ${opt%% *}: directories $dirs_message"
done
OPT_PREFIX=${OPT_PREFIX%/} CONFIG_DIR=${CONFIG_DIR%/} OPT_STATE=${OPT_STATE%/}
UNIT_DIR=${UNIT_DIR%/} SYSTEMD_DIR=${SYSTEMD_DIR%/}
[ -z "$TOKEN" ] || check token "$TOKEN" "--token: that is not a join token (ocj_...)"
if [ -n "$FINGERPRINT" ]; then
    FINGERPRINT=$(printf '%s\n' "${FINGERPRINT#sha256:}" | tr 'A-F' 'a-f' | tr -d ':')
    check fingerprint "$FINGERPRINT" "--ca-fingerprint must be sha256: and 64 hex digits"
fi
[ -z "$OPT_CONTROLLER" ] || check url "${OPT_CONTROLLER%/}" "--controller must be an http(s):// URL"
OPT_CONTROLLER=${OPT_CONTROLLER%/}
[ -z "$OPT_NAME" ] || check name "$OPT_NAME" "--name may have letters, digits and _ . - only"
[ -z "$OPT_INTERVAL" ] || check seconds "$OPT_INTERVAL" "--interval must be a number of seconds"
[ -z "$OPT_MEMORY_MAX" ] || check size "$OPT_MEMORY_MAX" "--memory-max must be like 512M, 2G, 50% or infinity"
[ -z "$OPT_TASKS_MAX" ] || check count "$OPT_TASKS_MAX" "--tasks-max must be a number, a percentage or infinity"

is_root() { [ "$(id -u)" = 0 ]; }
has_systemd() { [ -d "$SYSTEMD_DIR" ] && command -v systemctl >/dev/null 2>&1; }
# shellcheck disable=SC2012
owner_group() { ls -ldn -- "$1" | awk '{ print $3 ":" $4 }'; }  # numeric, of a path
owner() { o=$(owner_group "$1"); echo "${o%%:*}"; }
words() {  # its arguments' words, one space between (values checked: no globs)
    # shellcheck disable=SC2048,SC2086
    echo $*
}
writable_by_others() {  # group- or other-writable, or with an ACL
    case "$(ls -ldn -- "$1")" in ?????w*|????????w*|??????????+*) return 0 ;; esac
    return 1
}
is_empty_dir() { [ -d "$1" ] && [ ! -L "$1" ] && [ -z "$(ls -A -- "$1")" ]; }
empty_dir() {  # remove what is in a directory (one that was empty before this script)
    for e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        if [ -e "$e" ] || [ -L "$e" ]; then rm -rf -- "$e"; fi
    done
}

# ---- the install record: what the script added, and the options it was given ----------------
# Root's own file (0600) in the configuration directory, which only root writes: never in a
# directory the agent may write (--user), and read key by key, each value checked, never run.
RECORD="$CONFIG_DIR/agent-install.record"
PIDFILE="$CONFIG_DIR/agent.pid"  # a foreground agent's process id: root's too
HAVE_RECORD=0 R_PREFIX="" R_STATE="" R_UNIT_FILE="" R_REMOVE="" R_EMPTY="" R_RMDIRS=""
R_USER_ADDED=0 R_PACKAGES="" R_FAMILY="" R_AGENT_ID="" R_FINGERPRINT="" R_CONTROLLER=""
R_AS_USER="" R_NAME="" R_INTERVAL="" R_MEMORY_MAX="" R_TASKS_MAX=""

load_record() {
    [ -e "$RECORD" ] || [ -L "$RECORD" ] || return 0
    [ -r "$RECORD" ] || die 1 "$RECORD: this needs root: run it with sudo"
    if [ ! -f "$RECORD" ] || [ -L "$RECORD" ] || [ "$(owner "$RECORD")" != "$(id -u)" ] ||
        writable_by_others "$CONFIG_DIR" || [ -L "$CONFIG_DIR" ]; then
        die 1 "$RECORD is not this script's (its own file, in a directory only it writes): not reading it"
    fi
    case "$(ls -ln -- "$RECORD")" in
        -rw-------\ *|-rw-------.\ *) ;;
        *) die 1 "$RECORD can be read or written by others (it must be mode 0600): not reading it" ;;
    esac
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in '#'*|'') continue ;; esac
        key=${line%%=*} value=${line#*=}
        [ "$key" != "$line" ] || bad_record "$line"
        case "$key" in
            version) [ "$value" = 1 ] || bad_record "$line" ;;
            prefix) valid path "$value" || bad_record "$line"; R_PREFIX=$value ;;
            state_dir) valid path "$value" || bad_record "$line"; R_STATE=$value ;;
            unit_file) [ -z "$value" ] || valid path "$value" || bad_record "$line"; R_UNIT_FILE=$value ;;
            remove) valid paths "$value" || bad_record "$line"; R_REMOVE=$value ;;
            empty) valid paths "$value" || bad_record "$line"; R_EMPTY=$value ;;
            rmdirs) valid paths "$value" || bad_record "$line"; R_RMDIRS=$value ;;
            user_added) valid bool "$value" || bad_record "$line"; R_USER_ADDED=$value ;;
            packages) valid packages "$value" || bad_record "$line"; R_PACKAGES=$value ;;
            package_family) valid family "$value" || bad_record "$line"; R_FAMILY=$value ;;
            agent_id) [ -z "$value" ] || valid hex "$value" || bad_record "$line"; R_AGENT_ID=$value ;;
            ca_fingerprint) [ -z "$value" ] || valid fingerprint "$value" || bad_record "$line"; R_FINGERPRINT=$value ;;
            controller) [ -z "$value" ] || valid url "$value" || bad_record "$line"; R_CONTROLLER=$value ;;
            as_user) valid bool "$value" || bad_record "$line"; R_AS_USER=$value ;;
            name) [ -z "$value" ] || valid name "$value" || bad_record "$line"; R_NAME=$value ;;
            interval) [ -z "$value" ] || valid seconds "$value" || bad_record "$line"; R_INTERVAL=$value ;;
            memory_max) [ -z "$value" ] || valid size "$value" || bad_record "$line"; R_MEMORY_MAX=$value ;;
            tasks_max) [ -z "$value" ] || valid count "$value" || bad_record "$line"; R_TASKS_MAX=$value ;;
            *) bad_record "$line" ;;
        esac
    done < "$RECORD"
    if [ -z "$R_PREFIX" ] || [ -z "$R_STATE" ]; then bad_record "(no prefix or state_dir)"; fi
    HAVE_RECORD=1
}
bad_record() {
    die 1 "$RECORD is not what this script writes ($1): not using it; move it away to install afresh (then --uninstall knows of nothing to remove)"
}

if [ "$PRINT_UNIT" = 0 ] || [ -r "$RECORD" ]; then
    load_record
fi

# the record's options, unless given again (a re-run of the printed command keeps --user...)
kept=""
remember() {  # remember VALUE-GIVEN VALUE-RECORDED OPTION-WORDS: note when the record's is used
    if [ -z "$1" ] && [ -n "$2" ]; then kept="$kept $3"; fi
}
if [ "$HAVE_RECORD" = 1 ]; then
    if [ -n "$OPT_PREFIX" ] && [ "$OPT_PREFIX" != "$R_PREFIX" ]; then
        die 2 "the agent is installed with --prefix $R_PREFIX ($RECORD): give that, or --uninstall it first"
    fi
    if [ -n "$OPT_STATE" ] && [ "$OPT_STATE" != "$R_STATE" ]; then
        die 2 "the agent is installed with --state-dir $R_STATE ($RECORD): give that, or --uninstall it first"
    fi
    if [ -z "$OPT_USER" ] && [ "$R_AS_USER" = 1 ]; then kept="$kept --user"; fi
    if [ "$R_CONTROLLER" != "$CONTROLLER" ]; then  # not this script's own default
        remember "$OPT_CONTROLLER" "$R_CONTROLLER" "--controller $R_CONTROLLER"
    fi
    remember "$OPT_NAME" "$R_NAME" "--name $R_NAME"
    remember "$OPT_INTERVAL" "$R_INTERVAL" "--interval $R_INTERVAL"
    remember "$OPT_MEMORY_MAX" "$R_MEMORY_MAX" "--memory-max $R_MEMORY_MAX"
    remember "$OPT_TASKS_MAX" "$R_TASKS_MAX" "--tasks-max $R_TASKS_MAX"
fi
PREFIX=${OPT_PREFIX:-${R_PREFIX:-/opt/overcast-agent}}
STATE=${OPT_STATE:-${R_STATE:-/var/lib/overcast-agent}}
CONFIG="$CONFIG_DIR/agent.toml"
CONTROLLER=${OPT_CONTROLLER:-${R_CONTROLLER:-$CONTROLLER}}
AS_USER=${OPT_USER:-${R_AS_USER:-0}}
NAME=${OPT_NAME:-$R_NAME} INTERVAL=${OPT_INTERVAL:-$R_INTERVAL}
GIVEN_MEMORY_MAX=${OPT_MEMORY_MAX:-$R_MEMORY_MAX} GIVEN_TASKS_MAX=${OPT_TASKS_MAX:-$R_TASKS_MAX}
if [ "$AS_USER" = 1 ]; then
    MEMORY_MAX=${GIVEN_MEMORY_MAX:-256M} TASKS_MAX=${GIVEN_TASKS_MAX:-256}
else
    MEMORY_MAX=${GIVEN_MEMORY_MAX:-1G} TASKS_MAX=${GIVEN_TASKS_MAX:-1024}
fi
UNIT_FILE="$UNIT_DIR/$UNIT_NAME"
overlap() { case "$1/" in "$2/"*) return 0 ;; esac; case "$2/" in "$1/"*) return 0 ;; esac; return 1; }
if overlap "$PREFIX" "$CONFIG_DIR" || overlap "$PREFIX" "$STATE" || overlap "$CONFIG_DIR" "$STATE"; then
    die 2 "--prefix, --config-dir and --state-dir must be three directories, none inside another"
fi

# ---- the systemd unit ---------------------------------------------------------------------
# As root (the default) the agent runs scripts and shells that administer this host, as any
# user, and can be a tunnel gateway (network interfaces, forwarding, NAT): file-system and
# kernel protections would break exactly that, so its unit limits resources only. With
# --user it runs as overcast-agent, fenced in (read-only system, no privileges): it reports
# and runs scripts as itself, and writes its state directory only (its environment stays
# root's: the script, run again as root, upgrades it).
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
ReadWritePaths=$STATE
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

# ---- what this run changed, taken back when it fails -----------------------------------------
# ADDED: paths this run made (removed, newest first); EMPTIED: directories that were empty
# (emptied again); the rest: what was replaced, and its copy in $TMP to put back.
TMP="" DONE=0 ADDED="" EMPTIED="" DIRS_ADDED="" CREATED="" USER_ADDED=0 PKGS_NOW="" FAMILY=""
ENROLLED_NOW=0 AGENT_ID="" SWAPPED=0 OLD="" UNIT_WRITTEN=0 UNIT_OLD="" CONFIG_OLD="" RECORD_OLD=""
STATE_OWNER_OLD=""
added() { ADDED="$1
$ADDED"; }
mkdirs() {  # make a directory and its missing parents, noting each (--uninstall removes them)
    missing="" d=$1
    while [ ! -e "$d" ] && [ ! -L "$d" ]; do missing="$d $missing"; d=$(dirname "$d"); done
    for d in $missing; do
        mkdir "$d" || die 1 "cannot make $d"
        added "$d"
        DIRS_ADDED="$DIRS_ADDED $d"
    done
}
rollback() {
    if [ "$UNIT_WRITTEN" = 1 ]; then
        if [ -n "$UNIT_OLD" ]; then
            cp -p "$UNIT_OLD" "$UNIT_FILE"
        else  # a unit this run added: disabled (its wants link) and gone from systemd too
            systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1
            rm -f "$UNIT_FILE"
        fi
        systemctl daemon-reload
    fi
    if [ "$SWAPPED" = 1 ]; then rm -rf "$PREFIX" && mv "$OLD" "$PREFIX"; fi
    if [ -n "$CONFIG_OLD" ]; then cp -p "$CONFIG_OLD" "$CONFIG"; fi
    if [ -n "$RECORD_OLD" ]; then cp -p "$RECORD_OLD" "$RECORD"; fi
    if [ -n "$STATE_OWNER_OLD" ]; then chown -R "$STATE_OWNER_OLD" "$STATE"; fi
    printf '%s\n' "$ADDED" | while IFS= read -r path; do
        if [ -n "$path" ]; then rm -rf "$path"; fi
    done
    for d in $EMPTIED; do empty_dir "$d"; done
    if [ "$USER_ADDED" = 1 ]; then userdel "$SERVICE_USER" >/dev/null 2>&1; fi
    # shellcheck disable=SC2086
    if [ -n "$PKGS_NOW" ]; then pkg_remove "$FAMILY" $PKGS_NOW; fi
    if [ "$UNIT_WRITTEN" = 1 ] && [ -n "$UNIT_OLD" ]; then
        systemctl restart "$UNIT_NAME" && say "the earlier agent runs again"
    fi
}
on_exit() {
    rc=$?
    set +e  # clean up all there is to clean, and keep the exit code
    if [ "$DONE" != 1 ] && [ "$rc" != 0 ]; then
        rollback
        if [ "$HAVE_RECORD" = 1 ]; then
            say "the earlier install is as it was"
        elif [ -n "$ADDED$EMPTIED$PKGS_NOW" ] || [ "$USER_ADDED" = 1 ]; then
            say "nothing was left installed"
        fi
        if [ "$ENROLLED_NOW" = 1 ]; then
            say "but this host was enrolled as agent $AGENT_ID before that: the controller keeps that agent (and the join token's use is spent): revoke it there with 'overcast agent revoke $AGENT_ID'"
        fi
    fi
    if [ -n "$TMP" ]; then rm -rf "$TMP"; fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---- OS packages: the script removes those it installed, and only those -----------------------
rhel_tool() { if command -v dnf >/dev/null 2>&1; then echo dnf; elif command -v yum >/dev/null 2>&1; then echo yum; else return 1; fi; }
pkg_installed() {  # pkg_installed FAMILY NAME
    if [ "$1" = debian ]; then
        # shellcheck disable=SC2016
        dpkg-query -W -f='${Status}' "$2" 2>/dev/null | grep -q ' installed$'
    else
        rpm -q "$2" >/dev/null 2>&1
    fi
}
pkg_install() {  # pkg_install NAME...: false when the package manager fails
    is_root || die 1 "please install $* (this needs root)"
    new=""
    for p in "$@"; do pkg_installed "$FAMILY" "$p" || new="$new $p"; done
    say "installing $* ($FAMILY packages)"
    if [ "$FAMILY" = debian ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 ||
            { apt-get update -q </dev/null >&2 && apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; } ||
            return 1
    else
        tool=$(rhel_tool) || die 1 "neither dnf nor yum is here: please install $*"
        "$tool" install -y -q "$@" </dev/null >&2 || return 1
    fi
    PKGS_NOW="$PKGS_NOW$new"
}
pkg_known() {  # whether the package manager knows NAME (after pkg_install's update)
    if [ "$FAMILY" = debian ]; then
        apt-cache show "$1" >/dev/null 2>&1
    else
        tool=$(rhel_tool) && "$tool" -q info "$1" </dev/null >/dev/null 2>&1
    fi
}
pkg_remove() {  # pkg_remove FAMILY NAME...: those still installed, unless others need them
    fam=$1; shift
    # shellcheck disable=SC2046
    set -- $(for p in "$@"; do if pkg_installed "$fam" "$p"; then echo "$p"; fi; done)
    [ $# -gt 0 ] || return 0
    if [ "$fam" = debian ]; then
        # apt would take what depends on them too: only when nothing does
        n=$(apt-get -s remove "$@" 2>/dev/null | grep -c '^Remv ') || true
        if [ "$n" = $# ] && DEBIAN_FRONTEND=noninteractive apt-get remove -y -q "$@" </dev/null >&2; then
            say "removed the packages this script installed: $*"
            return 0
        fi
    elif rpm -e "$@" >&2; then  # rpm refuses what other packages need
        say "removed the packages this script installed: $*"
        return 0
    fi
    say "kept the packages this script installed, $*: other packages need them (remove them by hand when nothing does)"
}

# ---- a foreground agent: its process id in $PIDFILE (root's), checked before it is stopped ---
is_the_agent() {  # is_the_agent PID: the process runs $PREFIX/bin/python -m agent
    [ "$1" != "$$" ] || return 1
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    python=$(readlink -f "$PREFIX/bin/python" 2>/dev/null) || return 1
    [ "$exe" = "$python" ] || return 1
    cmdline=$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) || return 1
    case "$cmdline" in "$PREFIX"/bin/python*" -m agent "*) return 0 ;; esac
    return 1
}
stop_foreground() {  # the agent an earlier --foreground run left running
    [ -f "$PIDFILE" ] || return 0
    pid=$(head -n 1 "$PIDFILE")
    case "$pid" in *[!0-9]*|'') pid="" ;; esac
    if [ -n "$pid" ] && is_the_agent "$pid"; then
        say "stopping the agent running in the foreground (process $pid)"
        kill "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
        kill -9 "$pid" 2>/dev/null || true
    elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "process $pid (in $PIDFILE) is not the agent ($PREFIX/bin/python -m agent): leaving it be"
    fi
    rm -f "$PIDFILE"
}

# ---- uninstall: what the record says this script added, and nothing else -------------------
uninstall() {
    if [ "$HAVE_RECORD" != 1 ]; then
        say "there is no install record ($RECORD): this script knows of nothing it added here, so it removes nothing"
        say "if the agent was installed here by other means, remove what is its by hand, checking each first: the unit ($UNIT_FILE: systemctl disable --now $UNIT_NAME), its environment ($PREFIX), $CONFIG, its state directory ($STATE)"
        exit 1
    fi
    if [ -n "$R_UNIT_FILE" ] && [ -e "$R_UNIT_FILE" ]; then
        if has_systemd; then systemctl disable --now "$UNIT_NAME" >/dev/null 2>&1 || true; fi
        rm -f "$R_UNIT_FILE"
        if has_systemd; then systemctl daemon-reload || true; fi
        say "removed $R_UNIT_FILE"
    fi
    stop_foreground
    for path in $R_REMOVE; do
        case "$path" in
            "$PREFIX"|"$CONFIG"|"$STATE") ;;
            *) say "not removing $path: it is not the agent's environment, agent.toml or state directory"; continue ;;
        esac
        if [ -e "$path" ] || [ -L "$path" ]; then rm -rf -- "$path"; say "removed $path"; fi
    done
    for d in $R_EMPTY; do
        case "$d" in
            "$PREFIX"|"$STATE") if [ -d "$d" ] && [ ! -L "$d" ]; then empty_dir "$d"; say "emptied $d (it was empty before)"; fi ;;
        esac
    done
    rm -f "$RECORD"
    innermost_first=""
    for d in $R_RMDIRS; do innermost_first="$d $innermost_first"; done
    for d in $innermost_first; do rmdir "$d" 2>/dev/null || true; done  # only when empty
    if [ "$R_USER_ADDED" = 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
        userdel "$SERVICE_USER" && say "removed the user $SERVICE_USER"
    fi
    # shellcheck disable=SC2086
    if [ -n "$R_PACKAGES" ]; then pkg_remove "$R_FAMILY" $R_PACKAGES; fi
    say "uninstalled (the controller still lists agent ${R_AGENT_ID:-ID}: revoke it there with 'overcast agent revoke ${R_AGENT_ID:-ID}')"
    exit 0
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
fi

# ---- the platform -------------------------------------------------------------------------
MODE=print  # no systemd, no --foreground: install, then print the command to run the agent
if [ "$FOREGROUND" = 1 ]; then MODE=foreground; elif has_systemd; then MODE=unit; fi
if ! is_root; then
    if [ "$MODE" = unit ] || [ "$AS_USER" = 1 ] || [ "$PREFIX" = /opt/overcast-agent ] ||
        [ "$CONFIG_DIR" = /etc/overcast ] || [ "$STATE" = /var/lib/overcast-agent ]; then
        die 1 "this needs root: run it with sudo (or give --prefix, --config-dir and --state-dir you can write, and --foreground)"
    fi
fi
[ -r "$OS_RELEASE" ] || die 6 "cannot tell the platform: $OS_RELEASE is missing (supported: Debian, Ubuntu, RHEL and its family)"
os_id=$(sed -n 's/^ID=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
os_like=$(sed -n 's/^ID_LIKE=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
os_name=$(sed -n 's/^PRETTY_NAME=//p' "$OS_RELEASE" | tr -d '"' | head -n 1)
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
for t in sed tr cut awk base64 sha256sum mktemp readlink; do
    command -v "$t" >/dev/null 2>&1 || die 1 "please install $t (coreutils)"
done

# ---- what is here already: an earlier install of this script's, or nothing of the agent's ----
if [ -e "$CONFIG_DIR" ] && { writable_by_others "$CONFIG_DIR" || [ -L "$CONFIG_DIR" ]; }; then
    die 1 "$CONFIG_DIR can be written by others: the agent's configuration and install record go in a directory only root writes"
fi
EARLIER=0  # $PREFIX holds the environment of an earlier install (the record says so)
if [ -e "$PREFIX" ] || [ -L "$PREFIX" ]; then
    if [ "$HAVE_RECORD" = 1 ] && [ -d "$PREFIX" ] && [ ! -L "$PREFIX" ] && ! is_empty_dir "$PREFIX"; then
        EARLIER=1
    elif ! is_empty_dir "$PREFIX"; then
        die 1 "$PREFIX exists and is not an earlier install of the Overcast agent (there is no install record $RECORD): not installing into it; give another --prefix, or move it away"
    fi
fi
ENROLLED=0
if [ -f "$STATE/agent.json" ] && grep -q '"agent_id": "[0-9a-f]' "$STATE/agent.json"; then
    ENROLLED=1
    AGENT_ID=$R_AGENT_ID
    [ -n "$AGENT_ID" ] || AGENT_ID=$(sed -n 's/.*"agent_id": "\([0-9a-f]*\)".*/\1/p' "$STATE/agent.json" | head -n 1)
elif [ -e "$STATE" ] && ! is_empty_dir "$STATE"; then
    die 1 "$STATE exists, is not empty and holds no agent identity: not using it; give another --state-dir, or move it away"
fi
if [ "$MODE" = unit ] && [ -e "$UNIT_FILE" ] && [ "$R_UNIT_FILE" != "$UNIT_FILE" ]; then
    die 1 "$UNIT_FILE exists and this script did not install it: not replacing it"
fi
if [ "$MODE" = foreground ] && [ "$AS_USER" = 1 ]; then
    command -v setpriv >/dev/null 2>&1 || die 1 "please install setpriv (util-linux): it runs the agent as $SERVICE_USER"
fi
[ "$ENROLLED" = 1 ] || [ -n "$TOKEN" ] || die 2 "--token TOKEN is required (this host is not enrolled yet): make one with 'overcast token join create'"
if [ -n "$kept" ]; then say "as installed before:$kept (options given now win)"; fi

command -v curl >/dev/null 2>&1 || pkg_install curl || die 1 "could not install curl"

unsupported_python="unsupported: needs Python 3.11+ (Debian 12+, Ubuntu 22.04+)"
[ "$FAMILY" = debian ] || unsupported_python="unsupported: needs Python 3.11+ (RHEL, Rocky, AlmaLinux 8.8+ or 9.2+, Fedora, Amazon Linux 2023)"
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
    if [ "$FAMILY" = debian ]; then set -- python3.11 python3.11-venv; else set -- python3.11; fi
    if ! pkg_install "$@"; then
        pkg_known python3.11 || die 6 "$unsupported_python: this release has no python3.11 package"
        die 1 "the package manager could not install $* (above)"
    fi
    find_python || die 6 "$unsupported_python: none could be installed here"
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' </dev/null)
if ! "$PY" -c 'import venv, ensurepip' </dev/null >/dev/null 2>&1; then
    if [ "$FAMILY" = debian ]; then set -- "python$pyver-venv"; else set -- python3-pip; fi
    pkg_install "$@" || die 1 "the package manager could not install $* (above)"
    "$PY" -c 'import venv, ensurepip' </dev/null >/dev/null 2>&1 ||
        die 1 "$PY cannot make virtual environments (its venv or ensurepip module is missing)"
fi
say "$os_name on $ARCH, Python $pyver ($PY)"

# ---- the controller -----------------------------------------------------------------------
valid url "$CONTROLLER" || die 2 "--controller must be an http(s):// URL"
TMP=$(mktemp -d)
k=""
case "$CONTROLLER" in https://*) k="-k" ;; esac
# ca.pem is fetched without verification, then trusted only if it matches the pin (or, when
# re-run without one, the CA this host enrolled with: in the install record)
curl -fsS $k --max-time 20 "$CONTROLLER/ca.pem" -o "$TMP/ca.pem" 2>"$TMP/curl.err" ||
    die 5 "cannot reach the controller at $CONTROLLER ($(tail -n 1 "$TMP/curl.err")); nothing was installed"
fp() { sed '/-----/d' "$1" | tr -d '\r\n' | base64 -d 2>/dev/null | sha256sum | cut -d' ' -f1; }
got=$(fp "$TMP/ca.pem")
if [ -n "$FINGERPRINT" ]; then
    want=$FINGERPRINT
elif [ "$ENROLLED" = 1 ] && [ -n "$R_FINGERPRINT" ]; then
    want=$R_FINGERPRINT
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

# ---- the virtual environment: a new one beside $PREFIX, put in its place at the end ----------
mkdirs "$(dirname "$PREFIX")"
NEW=$(mktemp -d "$PREFIX.new.XXXXXX") || die 1 "cannot make a directory beside $PREFIX"
added "$NEW"
chmod 755 "$NEW"
if [ "$EARLIER" = 1 ]; then
    say "upgrading the agent in $PREFIX to $OC_VERSION (in a new environment: the earlier one stays until this one is ready)"
else
    say "installing the agent $OC_VERSION into $PREFIX"
fi
"$PY" -m venv "$NEW" </dev/null >&2 || die 1 "cannot make a virtual environment in $NEW"
# Python 3.11's venv brings setuptools too (9 MB): nothing of the agent's needs it
"$NEW/bin/python" -m pip uninstall -q -y setuptools </dev/null >/dev/null 2>&1 || true
PIP="$NEW/bin/python -m pip --disable-pip-version-check --no-input --no-cache-dir -q install --no-compile"
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
# the environment's scripts and compiled files name the path it will have
new_re=$(printf '%s\n' "$NEW" | sed 's/[.]/\\./g')
for f in "$NEW"/bin/*; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -q "$new_re" "$f"; then
        sed "s|$new_re|$PREFIX|g" "$f" > "$f.tmp" && cat "$f.tmp" > "$f" && rm -f "$f.tmp"
    fi
done
"$NEW/bin/python" -m compileall -q -f -s "$NEW" -p "$PREFIX" "$NEW/lib" </dev/null >/dev/null 2>&1 || true

# ---- configuration (a new file, put in place at the end), enrolment, user ---------------------
mkdirs "$CONFIG_DIR"
NEWCONF="$CONFIG_DIR/.agent.toml.new"
rm -f "$NEWCONF"
added "$NEWCONF"
if [ -f "$CONFIG" ]; then cp "$CONFIG" "$NEWCONF"; fi
set -- controller="$CONTROLLER" state_dir="$STATE" ca_fingerprint="sha256:$want"
[ -n "$INTERVAL" ] && set -- "$@" interval="$INTERVAL"
[ -n "$NAME" ] && set -- "$@" hostname="$NAME"
"$NEW/bin/python" -m agent.config write "$NEWCONF" "$@" </dev/null || die 1 "cannot write $CONFIG"
if [ "$ENROLLED" = 1 ]; then
    say "already enrolled as $AGENT_ID: keeping this identity"
else
    mkdirs "$(dirname "$STATE")"
    if [ -d "$STATE" ]; then
        EMPTIED="$EMPTIED $STATE"
    else
        mkdir "$STATE" || die 1 "cannot make $STATE"
        added "$STATE"
        CREATED="$CREATED $STATE"
    fi
    chmod 700 "$STATE"
    rc=0
    # the token on standard input: a command line is there for any user of this host to read
    printf '%s\n' "$TOKEN" | "$NEW/bin/python" -m agent --config "$NEWCONF" --token-file - \
        --ca-fingerprint "sha256:$want" --enrol-only || rc=$?
    case "$rc" in
        0) ;;
        3) die 3 "the controller refused the join token (above): make a new one with 'overcast token join create'" ;;
        5) die 5 "cannot reach the controller to enrol (above)" ;;
        *) die 1 "enrolment failed (exit $rc)" ;;
    esac
    AGENT_ID=$(sed -n 's/.*"agent_id": "\([0-9a-f]*\)".*/\1/p' "$STATE/agent.json" | head -n 1)
    ENROLLED_NOW=1
fi
if [ "$AS_USER" = 1 ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir "$STATE" --shell /usr/sbin/nologin "$SERVICE_USER" ||
            die 1 "cannot add the user $SERVICE_USER"
        USER_ADDED=1
    fi
    SVC_UID=$(id -u "$SERVICE_USER") SVC_GID=$(id -g "$SERVICE_USER")
    chgrp "$SVC_GID" "$NEWCONF" && chmod 640 "$NEWCONF"
fi
RUN="$PREFIX/bin/python -m agent --config $CONFIG"
[ "$AS_USER" = 0 ] || RUN="runuser -u $SERVICE_USER -- $RUN"

# ---- in place: the earlier install is replaced (and put back should the agent not start) -----
stop_foreground
if [ "$EARLIER" = 1 ]; then
    OLD="$PREFIX.old.$$"
    mv "$PREFIX" "$OLD" || die 1 "cannot move $PREFIX aside"
    SWAPPED=1
    mv "$NEW" "$PREFIX" || die 1 "cannot move the new environment to $PREFIX"
elif [ -d "$PREFIX" ]; then  # an empty directory (a mount point...): the environment goes in it
    EMPTIED="$EMPTIED $PREFIX"
    for e in "$NEW"/*; do mv "$e" "$PREFIX/" || die 1 "cannot move the new environment to $PREFIX"; done
    rmdir "$NEW"
else
    mv "$NEW" "$PREFIX" || die 1 "cannot move the new environment to $PREFIX"
    added "$PREFIX"
    CREATED="$CREATED $PREFIX"
fi
# the state directory is the agent's own (--user): its environment, agent.toml and the record
# stay root's, and nothing there is writable to it
want_owner=0
if [ "$AS_USER" = 1 ]; then want_owner=$SVC_UID; fi
if [ "$(owner "$STATE")" != "$want_owner" ]; then
    STATE_OWNER_OLD=$(owner_group "$STATE")
    if [ "$AS_USER" = 1 ]; then chown -R "$SVC_UID:$SVC_GID" "$STATE"; else chown -R 0:0 "$STATE"; fi
fi
if [ -e "$CONFIG" ]; then
    CONFIG_OLD="$TMP/agent.toml.old"
    cp -p "$CONFIG" "$CONFIG_OLD"
else
    added "$CONFIG"
    CREATED="$CREATED $CONFIG"
fi
mv -f "$NEWCONF" "$CONFIG"
if [ "$MODE" = unit ]; then
    if [ -e "$UNIT_FILE" ]; then UNIT_OLD="$TMP/unit.old"; cp -p "$UNIT_FILE" "$UNIT_OLD"; fi
    unit_recorded=$UNIT_FILE
else
    unit_recorded=$R_UNIT_FILE
fi
if [ "$HAVE_RECORD" = 1 ]; then RECORD_OLD="$TMP/record.old"; cp -p "$RECORD" "$RECORD_OLD"; else added "$RECORD"; fi
user_added=$R_USER_ADDED
[ "$USER_ADDED" = 0 ] || user_added=1
(
    umask 077
    cat > "$RECORD.new" <<EOF
# The Overcast agent's install record: what the install script added here (--uninstall
# removes that, and nothing else) and the options it was given (a re-run uses them again).
# Written by the script, root's alone; read key by key, never run.
version=1
prefix=$PREFIX
state_dir=$STATE
unit_file=$unit_recorded
remove=$(words "$R_REMOVE" "$CREATED")
empty=$(words "$R_EMPTY" "$EMPTIED")
rmdirs=$(words "$R_RMDIRS" "$DIRS_ADDED")
user_added=$user_added
packages=$(words "$R_PACKAGES" "$PKGS_NOW")
package_family=$FAMILY
agent_id=$AGENT_ID
ca_fingerprint=$want
controller=${OPT_CONTROLLER:-$R_CONTROLLER}
as_user=$AS_USER
name=$NAME
interval=$INTERVAL
memory_max=$GIVEN_MEMORY_MAX
tasks_max=$GIVEN_TASKS_MAX
EOF
    mv -f "$RECORD.new" "$RECORD"
) || die 1 "cannot write $RECORD"

# ---- run it ---------------------------------------------------------------------------------
if [ "$MODE" = unit ]; then
    UNIT_WRITTEN=1
    unit > "$UNIT_FILE" || die 1 "cannot write $UNIT_FILE"
    systemctl daemon-reload || die 1 "systemctl daemon-reload failed"
    systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || die 1 "systemctl could not enable $UNIT_NAME"
    systemctl restart "$UNIT_NAME" || die 1 "the agent did not start: journalctl -u $UNIT_NAME"
    DONE=1
    rm -rf "$OLD"
    say "agent $AGENT_ID installed ($OC_VERSION) and running: $UNIT_NAME"
    say "check it: systemctl status $UNIT_NAME; journalctl -u $UNIT_NAME -f; on the controller: overcast agent show $AGENT_ID"
    exit 0
fi
DONE=1
rm -rf "$OLD"
if [ "$MODE" = print ]; then
    say "no systemd here (it is not process 1): no unit was installed, and the agent is not running"
fi
say "agent $AGENT_ID installed ($OC_VERSION); under a supervisor of your own, run: $RUN"
say "check it on the controller: overcast agent show $AGENT_ID"
if [ "$MODE" = print ]; then
    say "(or run this script again with --foreground to run the agent here, in the foreground)"
    exit 0
fi
rm -rf "$TMP"
TMP=""
trap - EXIT INT TERM
(umask 077; echo "$$" > "$PIDFILE")
if [ "$AS_USER" = 1 ]; then
    exec env HOME="$STATE" USER="$SERVICE_USER" LOGNAME="$SERVICE_USER" \
        setpriv --reuid="$SVC_UID" --regid="$SVC_GID" --init-groups -- \
        "$PREFIX/bin/python" -m agent --config "$CONFIG" </dev/null
fi
exec "$PREFIX/bin/python" -m agent --config "$CONFIG" </dev/null
