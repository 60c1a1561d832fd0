"""Clouds: provider adapters (libcloud), pollers that keep the inventory, and actions."""
