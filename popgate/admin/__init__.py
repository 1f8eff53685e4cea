"""
The C{popgate} admin command's work, one module per command or part:
the admin socket (L{popgate.admin.commands}, served by
L{popgate.admin.server}, asked by L{popgate.admin.client}),
C{check-config}, C{auth test}/C{auth lookup}, C{pw} and C{passwd}.
L{popgate.cli} only parses the command line and dispatches.
"""
