"""The bigger subcommands: each module has add_parser(subparsers) and its handler."""
