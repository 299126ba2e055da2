"""Built-in sources (importing this package registers them)."""

from fluent_ld.sources import forward, monitor, sample, webhook  # noqa: F401
