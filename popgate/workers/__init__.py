"""
Using every core: C{--workers N} runs N popgate processes that each bind
the same TCP ports with C{SO_REUSEPORT}, so the kernel spreads incoming
connections over them.

The first process (the one twistd started) serves too, and supervises the
others (L{popgate.workers.pool}): it starts them with its own command
line, restarts one that dies, and stops them when it stops.  A worker
(L{popgate.workers.child}) reads its standard input and exits when it
closes, so no worker outlives its parent even after a C{kill -9}.  Every
process listens through L{popgate.workers.reuseport}.  The maildrop lock
is an C{flock}, so it stays exclusive across workers.  A worker's log
lines go through the first process to its log (L{popgate.workers.log_relay}).
"""
