"""Command-line interface: ``redistill <command>``; one module per command."""
