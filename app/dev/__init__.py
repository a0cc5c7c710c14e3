"""Tools for trying the gateway without a VTEX account: `orderhook dev ...`."""
