"""lt's version, in one place: the package and the command read it from here."""

__version__ = "0.1.0"
