"""Built-in model-format plugins: export to and import from other checkpoint layouts."""
