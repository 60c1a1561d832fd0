"""The one write path: a state change, its audit entry and its live event, together."""
