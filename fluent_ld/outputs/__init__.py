"""Built-in outputs (importing this package registers them)."""

from fluent_ld.outputs import null, stdout  # noqa: F401
