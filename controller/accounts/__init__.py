"""Users, organisations, members, sessions and API tokens."""
