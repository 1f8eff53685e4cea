"""
C{popgate uidl import} and C{popgate uidl verify}: carry the UIDLs the old
server gave its clients over to popgate, so "leave mail on server" clients
do not download everything again after a migration.

  - L{message}: what identifies a message on either side (a digest of its
    wire form, its Message-ID, its size);
  - L{sources}: the old server's UIDLs (a live POP3 server, Dovecot's
    C{dovecot-uidlist}, a plain C{uidl message-id} list);
  - L{match}: old messages to new ones, one to one;
  - L{targets}: popgate's store (Maildir, mbox, PostgreSQL), read and
    written;
  - L{command}: the command line.
"""
