"""One module per ``llava-vfs`` command. Each has ``main(args, config)`` (or ``main(args)`` for the two
commands that take no config), which ``vfs.cli`` imports only for the command that runs, after it has
parsed the command line and checked the config."""
