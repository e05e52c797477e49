"""The project's errors: a problem with the user's input (data, checkpoint, config), reported as one line."""


class UserError(Exception):
    """Raised for input the user can fix; every entry point prints its message in one line and exits with 2."""


class DataError(UserError):
    """A problem with the user's data or output folders; the message always names the offending file."""
