"""The built-in outputs; fluent_ld.registry lists them by @type."""
