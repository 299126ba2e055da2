"""The built-in sources; fluent_ld.registry lists them by @type."""
