"""Built-in fusion components."""
