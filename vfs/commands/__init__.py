"""The implementations of ``llava-vfs`` subcommands that belong to no lower layer (``vfs.cli`` parses)."""
