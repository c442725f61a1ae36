"""Built-in datasets components."""
