"""WireGuard tunnels (tunnels issue)."""
