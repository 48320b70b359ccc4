"""One exception type for mistakes a user can fix: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input (unknown name, missing data, impossible option). The message is the whole story."""
