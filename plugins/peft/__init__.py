"""Built-in peft components."""
