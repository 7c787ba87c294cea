"""The one exception type for user mistakes: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a missing file, an unknown name, a wrong type). Never a bug."""
