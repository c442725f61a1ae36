"""Recipes shipped with vlmplug (YAML files read with importlib.resources, so wheels carry them)."""
