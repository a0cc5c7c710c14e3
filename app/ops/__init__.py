"""What the people running the gateway see: stats, metrics, the dashboard, the delivery log."""
