"""The bigger subcommands (acl, debug, cpu-check): each module has ``add_parser(sub)``;
their shared option helpers are in :mod:`.options` (never ``virtdeb.cli``)."""
