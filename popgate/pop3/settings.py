"""
The knobs of a POP3 listener, in one frozen value built from the options.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SessionSettings:
    """
    @ivar implementation: the CAPA IMPLEMENTATION text; empty hides it.
    @ivar greeting: the text of the first C{+OK} line.
    @ivar idle_timeout: seconds of silence before the session is closed
        without UPDATE (RFC 1939 asks for at least 600).
    @ivar auth_failure_delay: seconds to wait before answering a failed
        login, slowing down password guessing.
    @ivar max_auth_failures: failed logins after which the connection closes.
    @ivar max_bad_commands: unknown or malformed commands after which the
        connection closes.
    @ivar max_line_length: longest command line accepted, CRLF included
        (RFC 2449: 255).
    @ivar hostname: used in the APOP timestamp.
    """

    implementation: str = "popgate"
    greeting: str = "popgate ready."
    idle_timeout: float = 600.0
    auth_failure_delay: float = 1.0
    max_auth_failures: int = 3
    max_bad_commands: int = 20
    max_line_length: int = 255
    hostname: str = "localhost"
