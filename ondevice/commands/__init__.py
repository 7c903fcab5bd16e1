"""The `ondevice` subcommands, one module each; `ondevice/cli.py` assembles them."""
