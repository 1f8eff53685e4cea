"""
Connection limits and listener hardening, as a login process has them.

One L{counts.ConnectionLimits} per process counts every connection of its
POP3, POP3S and LMTP listeners; each listener's factory is wrapped in a
L{refusal.LimitedFactory}.  Over the global limit, or over the per-address
limit (POP3 and POP3S; IPv6 grouped per /64; exempt networks not counted),
the client gets one C{-ERR [SYS/TEMP]} line (LMTP: C{421}) and is closed,
instead of an C{accept()} that fails with C{EMFILE} for everyone.

The default global limit comes from C{RLIMIT_NOFILE} (raised to the hard
limit at start-up), see L{budget.derived_limit}; L{process.build_limits}
builds it all.  Listeners get a backlog of 511 (or C{somaxconn}, if lower)
unless their endpoint string says otherwise (L{listener}).  Should
C{accept()} still fail (descriptors used up elsewhere), the
L{accept_errors.AcceptErrorWatch} turns Twisted's one-line-per-client
recovery messages into one line per interval, and pauses a listener that
would otherwise be retried in a busy loop; accepting resumes by itself.
"""
