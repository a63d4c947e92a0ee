"""click only: the `canarist` command, one module per command group."""
