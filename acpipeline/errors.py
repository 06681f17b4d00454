"""Errors that end a command with one plain line for the operator, not a traceback."""


class OperatorError(Exception):
    """A mistake the operator can fix (wrong URL, missing credentials, Node absent): the message says how."""
