"""The Overcast agent (agents issue)."""
