"""Errors that stop a command before any file is processed (exit code 2). Their message is
written for the user: what is wrong, with which file, and what to do."""


class UserError(Exception):
    pass
