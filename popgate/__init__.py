"""popgate: a POP3 server and mail gateway built on Twisted."""

__version__ = "0.1.0"
