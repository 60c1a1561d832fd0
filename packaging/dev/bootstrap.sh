#!/bin/sh
# Set up what running and testing Overcast needs on Debian/Ubuntu, idempotently and quickly:
# Debian packages (only the missing ones), the virtualenv, and the Python packages (only when
# pyproject.toml changed since the last install). Usage: bootstrap.sh [run|test|bench]
set -eu
what="${1:-run}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"

need_apt=""   # needed: without them nothing runs
nice_apt=""   # optional: used when there, else a fallback or a clear refusal (wrk, git)
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
want() { have_pkg "$1" || need_apt="$need_apt $1"; }
like() { have_pkg "$1" || command -v "$1" >/dev/null 2>&1 || nice_apt="$nice_apt $1"; }

if command -v dpkg-query >/dev/null 2>&1; then
    # a venv needs ensurepip, which Debian ships apart, unless this Python brings its own
    "$py" -c "import ensurepip" 2>/dev/null || want python3-venv
    # scripts from git repositories are cloned with git (without it they are refused in words)
    like git
    case "$what" in
        bench) like wrk ;;
        # libvirt-python (KVM clouds) builds against libvirt's headers
        # the clouds tests run a real sshd in network namespaces, and a real Docker-API
        # service (podman with runc; a busybox image is built from busybox-static)
        test) want libvirt-dev; want pkg-config; want gcc; want openssh-server; want iproute2
              want podman; want runc; want busybox-static
              # script tests serve and clone real repositories; run tests add a login user
              want git; want passwd
              # tunnel tests run real wireguard-go (no kernel module needed); without
              # --no-install-recommends wireguard-tools would pull a kernel image
              want wireguard-go; want wireguard-tools
              # the tunnel gateway's install script fetches with curl and NATs with iptables
              want curl; want iptables
              # the install scripts (agent, tunnel gateway) are checked with shellcheck
              want shellcheck ;;
    esac
    if [ -n "$need_apt$nice_apt" ] && [ "$(id -u)" != 0 ]; then
        if [ -n "$need_apt" ]; then
            echo "bootstrap: please install:$need_apt (as root: apt-get install$need_apt)" >&2
            exit 1
        fi
        echo "bootstrap: optional:$nice_apt not installed (as root: apt-get install$nice_apt);" \
             "going on without it (wrk: the API benchmark uses its Python load generator;" \
             "git: scripts from repositories are refused)" >&2
        nice_apt=""
    fi
    if [ -n "$need_apt$nice_apt" ]; then
        echo "bootstrap: installing Debian packages:$need_apt$nice_apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || [ -z "$need_apt" ] || exit 1
        if [ -n "$need_apt" ]; then
            # shellcheck disable=SC2086
            apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 $need_apt >/dev/null
        fi
        if [ -n "$nice_apt" ]; then
            # shellcheck disable=SC2086
            apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 $nice_apt >/dev/null ||
                echo "bootstrap: could not install$nice_apt; going on without it" >&2
        fi
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv"
    "$py" -m venv "$venv"
fi

extras="controller"
[ "$what" = run ] || extras="controller,test,kvm"
stamp="$venv/.overcast-installed-$extras"
sum="$(cat "$root/pyproject.toml" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
    echo "bootstrap: installing overcast[$extras] into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[$extras]"
    echo "$sum" > "$stamp"
fi
