"""fluent-ld: feed LaunchDarkly experiments from a Fluent Bit / Fluentd log pipeline."""

__version__ = "0.1.0.dev0"
