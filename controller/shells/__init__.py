"""Interactive shells on machines: relayed by their agents or over SSH, recorded and audited."""
