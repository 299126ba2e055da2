"""Built-in outputs (importing this package registers them)."""

from fluent_ld.outputs import forward, launchdarkly, null, stdout  # noqa: F401
