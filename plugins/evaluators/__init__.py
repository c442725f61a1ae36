"""Built-in evaluators components."""
