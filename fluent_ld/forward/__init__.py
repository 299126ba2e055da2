"""The Fluent forward protocol: codec and handshake (pure), server (asyncio)."""
