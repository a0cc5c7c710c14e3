"""Subscriptions: their spec (the TOML table, the admin API's JSON), the catalog in Redis every
process reads, and each process's live copy of it."""
