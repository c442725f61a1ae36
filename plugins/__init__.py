"""Built-in vlmplug plugins: one package per family, one light module per component.

Each component module holds only its spec, config dataclass and hookimpl; the torch code sits in a
private sibling (``_name.py``) imported when the component is selected.
"""
