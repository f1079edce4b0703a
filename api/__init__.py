"""The HTTP API, the CLI and the process entry points that wire everything together."""
