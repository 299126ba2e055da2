"""Built-in outputs (importing this package registers them)."""

from fluent_ld.outputs import launchdarkly, null, stdout  # noqa: F401
