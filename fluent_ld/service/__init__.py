"""Running the node as a service: one process (runner) or several workers on one port (supervisor), reloads and restarts."""
