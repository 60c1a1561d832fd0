"""Tunnels: WireGuard from the controller (the hub) to gateways inside private networks, so
that SSH, shells, scripts and cloud API calls reach addresses inside a tunnel's CIDRs."""
