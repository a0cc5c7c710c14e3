"""Alerts: the gateway tells people when something goes wrong.

One module per step: `config` (the `[[alerts]]` targets), `evaluate` (the conditions, run in
Redis by app/store/alerts.lua), `compose` (what a message says), `send` (the outbox, retried),
`unavailable` (store.unavailable, from memory) and `service` (the tasks of one process).
"""
