"""orderhook: a webhook receiver and relay gateway for VTEX order notifications."""

__version__ = "0.1.0"
