"""Mail stores: where users' mail lives (Maildir, mbox, SQL, memory, ...)."""
