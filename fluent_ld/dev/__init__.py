"""Development tools, apart from the node: the LaunchDarkly-compatible server and the demo."""
