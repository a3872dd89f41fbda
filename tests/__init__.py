"""BoltLink tests: one module per package module, real backends only."""
