"""Argument types shared by the front ends (the command line, serve, audiotag-ray), so they refuse alike."""

import argparse


def number(kind, minimum, maximum=None):
    """An argparse type: a number of ``kind`` within [minimum, maximum], with a message that says so."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= minimum:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        if maximum is not None and not value <= maximum:  # also refuses inf
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    return parse
