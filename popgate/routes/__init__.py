"""
Per-user routing for the proxy stores: which upstream each user's mailbox
is on, looked up by user name in a directory (C{--route}), apart from
checking passwords, so it serves upstream authentication (no C{--auth})
as well as local.

  - L{popgate.routes.source}: what a route source is, and C{--route
    TYPE:ARGS} made into one.
  - L{popgate.routes.ldap}, L{popgate.routes.sql}: the sources, an LDAP
    attribute or a SQL column holding the upstream's URL.
  - L{popgate.routes.router}: a source's answer made into the upstream a
    store connects to (its own URL schemes, the fallback, the failures).
"""
