#!/bin/sh
# Overcast tunnel gateway: run on a host inside a private network. It makes this gateway's
# WireGuard key here (the private key never leaves this host), registers the public key
# with the controller using a one-use token, brings the tunnel up (the controller is the
# hub; this side dials out, so no inbound port is needed), forwards and NATs traffic from
# the hub to the tunnel's networks (IPv4 from the hub's address, IPv6 from its IPv6 twin),
# and keeps it running (a systemd unit, or the foreground).
#
#   sh tunnel.sh --controller URL --token TOKEN --ca-fingerprint sha256:HEX
#                [--state-dir DIR] [--interface NAME] [--foreground] [--rotate]
#   sh tunnel.sh --up --state-dir DIR [--foreground]     (what the unit runs)
#   sh tunnel.sh --print-unit --state-dir DIR [--interface NAME]   (the unit, not installed)
#
# Exit codes: 0 done; 1 failed (a missing tool, a system error); 2 usage; 3 the controller
# refused the token; 4 the controller's CA does not match the fingerprint; 5 the controller
# cannot be reached.
# shellcheck disable=SC2153  # the OC_* variables come from tunnel.env, sourced
set -eu

CONTROLLER="" TOKEN="" FINGERPRINT="" STATE="/etc/overcast/tunnel" IFNAME=""
FOREGROUND=0 ROTATE=0 UP_ONLY=0 PRINT_UNIT=0

say() { echo "overcast tunnel: $*" >&2; }
die() { code=$1; shift; say "$*"; exit "$code"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --controller) CONTROLLER=${2:-}; shift 2 ;;
        --token) TOKEN=${2:-}; shift 2 ;;
        --ca-fingerprint) FINGERPRINT=${2:-}; shift 2 ;;
        --state-dir) STATE=${2:-}; shift 2 ;;
        --interface) IFNAME=${2:-}; shift 2 ;;
        --foreground) FOREGROUND=1; shift ;;
        --rotate) ROTATE=1; shift ;;
        --up) UP_ONLY=1; shift ;;
        --print-unit) PRINT_UNIT=1; shift ;;
        -h|--help) sed -n '2,18p' "$0" 2>/dev/null; exit 0 ;;
        *) die 2 "unknown argument: $1 (see --help)" ;;
    esac
done

[ -n "$STATE" ] || die 2 "--state-dir needs a directory"

apt_install() {
    if command -v apt-get >/dev/null 2>&1; then
        say "installing $* with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
            die 1 "apt-get could not install $*"
    else
        die 1 "please install $* (no apt-get here)"
    fi
}

need_tools() {
    for t in ip sed cut tr base64 sha256sum; do
        command -v "$t" >/dev/null 2>&1 || die 1 "please install $t (coreutils, iproute2)"
    done
    command -v curl >/dev/null 2>&1 || apt_install curl
    command -v wg >/dev/null 2>&1 || apt_install wireguard-tools
    command -v iptables >/dev/null 2>&1 || apt_install iptables
    if kernel_wireguard; then
        KERNEL=1
    else
        KERNEL=0
        command -v wireguard-go >/dev/null 2>&1 || apt_install wireguard-go
    fi
}

kernel_wireguard() {
    probe="ocwgp$$"
    if ip link add "$probe" type wireguard >/dev/null 2>&1; then
        ip link del "$probe" >/dev/null 2>&1 || true
        return 0
    fi
    return 1
}

# ---- registration ---------------------------------------------------------------------
register() {
    [ -n "$CONTROLLER" ] || die 2 "--controller URL is required"
    [ -n "$TOKEN" ] || die 2 "--token TOKEN is required (from 'overcast tunnels create' or rotate)"
    CONTROLLER=${CONTROLLER%/}
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    case "$CONTROLLER" in
        https://*)
            [ -n "$FINGERPRINT" ] || die 2 "--ca-fingerprint sha256:HEX is required for https"
            # ca.pem is fetched without verification, then trusted only if it matches the pin
            curl -fsSk --max-time 20 "$CONTROLLER/ca.pem" -o "$STATE/ca.pem.new" ||
                die 5 "cannot reach the controller at $CONTROLLER"
            got=$(sed '/-----/d' "$STATE/ca.pem.new" | tr -d '\r\n' | base64 -d | sha256sum | cut -d' ' -f1)
            want=$(echo "${FINGERPRINT#sha256:}" | tr 'A-F' 'a-f' | tr -d ':')
            if [ "$got" != "$want" ]; then
                rm -f "$STATE/ca.pem.new"
                die 4 "the controller's CA certificate (sha256:$got) does not match --ca-fingerprint sha256:$want: not trusting it"
            fi
            mv "$STATE/ca.pem.new" "$STATE/ca.pem"
            CURL="curl -sS --max-time 30 --cacert $STATE/ca.pem" ;;
        http://*) CURL="curl -sS --max-time 30" ;;
        *) die 2 "--controller must be an http(s):// URL" ;;
    esac
    if [ "$ROTATE" = 1 ] || [ ! -s "$STATE/private.key" ]; then
        (umask 077; wg genkey > "$STATE/private.key.new")
        mv "$STATE/private.key.new" "$STATE/private.key"
    fi
    chmod 600 "$STATE/private.key"
    public=$(wg pubkey < "$STATE/private.key")
    body=$(printf '{"token":"%s","public_key":"%s"}' "$TOKEN" "$public")
    out=$($CURL -H 'Content-Type: application/json' -d "$body" -w '\n%{http_code}' \
        "$CONTROLLER/api/v2/tunnels/register?format=shell") ||
        die 5 "cannot reach the controller at $CONTROLLER to register"
    code=$(printf '%s\n' "$out" | tail -n 1)
    answer=$(printf '%s\n' "$out" | sed '$d')
    message=$(printf '%s' "$answer" | sed -n 's/.*"message": *"\([^"]*\)".*/\1/p')
    case "$code" in
        200|201) ;;
        401) die 3 "the controller refused the token: ${message:-it is wrong, used or expired} (make a new one with 'overcast tunnels rotate')" ;;
        *) die 1 "the controller answered $code: ${message:-$answer}" ;;
    esac
    # the answer is shell assignments (OC_TUNNEL_ID='...'), every value checked by the controller
    printf '%s\n' "$answer" | grep -E "^OC_[A-Z][A-Z0-9_]*='[^']*'$" > "$STATE/tunnel.env.new" ||
        die 1 "the controller's answer is not what this script expects"
    [ -n "$IFNAME" ] && printf "OC_INTERFACE='%s'\n" "$IFNAME" >> "$STATE/tunnel.env.new"
    mv "$STATE/tunnel.env.new" "$STATE/tunnel.env"
    say "registered with $CONTROLLER"
}

# ---- the interface --------------------------------------------------------------------
load_state() {
    [ -s "$STATE/tunnel.env" ] || die 1 "$STATE/tunnel.env is missing: register first"
    OC_INTERFACE="" OC_HUB_ADDRESS6=""  # absent from what older controllers answered
    # shellcheck source=/dev/null  # written by register(), every value checked
    . "$STATE/tunnel.env"
    IFNAME=${OC_INTERFACE:-oc-$(printf '%s' "$OC_TUNNEL_ID" | cut -c1-8)}
}

nat() {  # nat -A|-D: forwarding NAT for each CIDR, from the hub's address of its family
    for cidr in $OC_CIDRS; do
        case "$cidr" in
            *:*) [ -n "$OC_HUB_ADDRESS6" ] || continue  # an older controller: no IPv6 twin
                 tool=ip6tables src=$OC_HUB_ADDRESS6 ;;
            *) tool=iptables src=$OC_HUB_ADDRESS ;;
        esac
        if [ "$1" = -A ]; then
            "$tool" -t nat -C POSTROUTING -s "$src" -d "$cidr" -j MASQUERADE 2>/dev/null ||
                "$tool" -t nat -A POSTROUTING -s "$src" -d "$cidr" -j MASQUERADE
        else
            "$tool" -t nat -D POSTROUTING -s "$src" -d "$cidr" -j MASQUERADE 2>/dev/null || true
        fi
    done
}

forwarding() {  # IPv4 always; IPv6 when the tunnel routes IPv6 (the hub has sent its twin)
    echo 1 > /proc/sys/net/ipv4/ip_forward || die 1 "cannot enable IPv4 forwarding"
    [ -n "$OC_HUB_ADDRESS6" ] || return 0
    command -v ip6tables >/dev/null 2>&1 || apt_install iptables
    if [ "$(cat /proc/sys/net/ipv6/conf/all/forwarding 2>/dev/null)" != 1 ]; then
        echo 1 > /proc/sys/net/ipv6/conf/all/forwarding || die 1 "cannot enable IPv6 forwarding"
        # a router ignores router advertisements unless accept_ra=2: say so, change nothing
        say "IPv6 forwarding is on now: if this host takes its own IPv6 address or route from router advertisements, set net.ipv6.conf.<uplink>.accept_ra=2"
    fi
}

stop_previous() {
    if [ -s "$STATE/gateway.pid" ]; then
        old=$(cat "$STATE/gateway.pid")
        if [ "$old" != "$$" ] && kill -0 "$old" 2>/dev/null; then
            kill "$old" 2>/dev/null || true
            n=0
            while kill -0 "$old" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
        fi
    fi
    ip link del "$IFNAME" >/dev/null 2>&1 || true
}

WGPID=""
bring_up() {
    stop_previous
    echo "$$" > "$STATE/gateway.pid"
    if [ "$KERNEL" = 1 ]; then
        ip link add "$IFNAME" type wireguard || die 1 "cannot create interface $IFNAME"
    else
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f "$IFNAME" >/dev/null 2>&1 &
        WGPID=$!
        n=0
        until [ -S "/var/run/wireguard/$IFNAME.sock" ] && ip link show "$IFNAME" >/dev/null 2>&1; do
            kill -0 "$WGPID" 2>/dev/null || die 1 "wireguard-go could not create $IFNAME"
            [ $n -lt 100 ] || die 1 "wireguard-go did not start for $IFNAME"
            sleep 0.05; n=$((n + 1))
        done
    fi
    umask 077
    {
        echo "[Interface]"
        echo "PrivateKey = $(cat "$STATE/private.key")"
        echo "[Peer]"
        echo "PublicKey = $OC_HUB_PUBLIC_KEY"
        echo "Endpoint = $OC_HUB_ENDPOINT"
        echo "AllowedIPs = $OC_ALLOWED_IPS"
        echo "PersistentKeepalive = $OC_KEEPALIVE"
    } > "$STATE/wg.conf"
    wg setconf "$IFNAME" "$STATE/wg.conf" || die 1 "wg could not configure $IFNAME"
    ip address add "$OC_ADDRESS" dev "$IFNAME"
    ip link set "$IFNAME" up
    for a in $(echo "$OC_ALLOWED_IPS" | tr ',' ' '); do ip route replace "$a" dev "$IFNAME"; done
    forwarding
    nat -A
    say "tunnel $OC_TUNNEL_ID up on $IFNAME ($OC_ADDRESS), dialling the hub at $OC_HUB_ENDPOINT"
}

tear_down() {
    trap - INT TERM EXIT
    nat -D
    [ -n "$WGPID" ] && kill "$WGPID" 2>/dev/null
    ip link del "$IFNAME" >/dev/null 2>&1 || true
    if [ -s "$STATE/gateway.pid" ] && [ "$(cat "$STATE/gateway.pid")" = "$$" ]; then
        rm -f "$STATE/gateway.pid"
    fi
}

run_foreground() {
    trap 'tear_down; exit 0' INT TERM
    trap 'tear_down' EXIT
    if [ -n "$WGPID" ]; then
        wait "$WGPID" || true
        say "wireguard-go for $IFNAME ended"
        exit 1
    fi
    while :; do sleep 3600 & wait $! || true; done
}

unit_text() {
    # systemd reads the path unquoted, and % starts its specifiers: keep to plain characters
    case "$STATE$IFNAME" in
        *[!A-Za-z0-9/._-]*) die 2 "--state-dir and --interface: only letters, digits and / . _ - in a systemd unit" ;;
    esac
    # StartLimitIntervalSec=0: a gateway that cannot start yet (no network) keeps trying
    cat <<EOF
[Unit]
Description=Overcast tunnel gateway ($IFNAME)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh $STATE/gateway.sh --up --foreground --state-dir $STATE
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
}

install_unit() {
    cp "$0" "$STATE/gateway.sh" 2>/dev/null || die 1 "cannot copy this script to $STATE/gateway.sh (run it from a file)"
    unit="/etc/systemd/system/overcast-tunnel-$IFNAME.service"
    unit_text > "$unit.new"
    mv "$unit.new" "$unit"
    systemctl daemon-reload
    systemctl enable "overcast-tunnel-$IFNAME.service" >/dev/null 2>&1
    systemctl restart "overcast-tunnel-$IFNAME.service" || die 1 "the unit did not start: journalctl -u overcast-tunnel-$IFNAME"
    say "installed and started overcast-tunnel-$IFNAME.service"
}

if [ "$PRINT_UNIT" = 1 ]; then
    [ -n "$IFNAME" ] || load_state
    unit_text
    exit 0
fi
[ "$(id -u)" = 0 ] || die 1 "this needs root: run it with sudo"
need_tools
[ "$UP_ONLY" = 1 ] || register
load_state
if [ "$FOREGROUND" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    install_unit
    exit 0
fi
if [ "$FOREGROUND" = 0 ]; then
    say "no systemd here: staying in the foreground; under a supervisor, run: sh $0 --up --foreground --state-dir $STATE"
fi
bring_up
run_foreground
