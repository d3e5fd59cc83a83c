"""Development tools, not shipped: throw-away local clusters and `make demo`."""
