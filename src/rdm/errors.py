"""Errors a user can fix: the CLI prints their message (which names the file, field or id) and exits 2."""


class UserError(Exception):
    """Bad input or configuration; the message says what and what to do."""
