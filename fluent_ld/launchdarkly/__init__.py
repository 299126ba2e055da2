"""The LaunchDarkly pipeline together: the preset and its mapping, their configuration, the sender, the output and what LaunchDarkly's answers mean."""
