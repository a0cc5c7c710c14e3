"""VTEX-native tools: what a store coming from VTEX's Hook or Feed v3 expects."""
