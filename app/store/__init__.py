"""Everything that touches Redis: key names, Lua scripts, the client and the embedded server."""
