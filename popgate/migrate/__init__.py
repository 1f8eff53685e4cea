"""
C{popgate migrate}: copy users' Maildir or mbox mailboxes into the
PostgreSQL mail store, keeping each message's UIDL, so that POP3 clients
that leave mail on the server do not fetch everything again after the
switch.

The source is read through popgate's own store (the one C{--store} would
serve it with), so the UIDLs and sizes written are exactly the ones POP3
clients have seen; it is never changed (a copy, not a move).  One module
per job: L{options} (the command line), L{users} (whom to copy),
L{source} (reading the old store), L{target} (the database),
L{copy} (one user), L{verify} and L{report}, and L{command} (the entry
point, the only place the reactor is looked up).
"""
