"""Notifications: e-mail over SMTP and webhooks, queued in the store, delivered in the
background with retries and backoff, every outcome kept, visible and audited."""
