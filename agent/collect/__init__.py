"""What the agent measures on its host: metric samples and the inventory."""
