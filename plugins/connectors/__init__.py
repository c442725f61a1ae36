"""Built-in connectors components."""
