"""The user error every verb may raise: the CLI prints its one line and exits 2."""


class UsageError(Exception):
    pass
