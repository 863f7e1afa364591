"""Thin spark-submit entry points; each forwards to the ``cxatlas`` CLI subcommand of the same name."""
