"""Subcommands of the kvplan CLI that live in their own modules."""
