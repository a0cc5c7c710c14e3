"""The fake VTEX moved into the package (`orderhook dev fake-vtex`): app/dev/fake_vtex.py."""

from app.dev.fake_vtex import APP_KEY, APP_TOKEN, SAMPLE_ORDER, FakeVtex

__all__ = ["APP_KEY", "APP_TOKEN", "SAMPLE_ORDER", "FakeVtex"]
