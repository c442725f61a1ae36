"""``python -m vlmplug`` runs the CLI."""

from vlmplug.cli import main

main()
