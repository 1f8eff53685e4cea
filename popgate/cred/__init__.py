"""
Checking passwords: the password schemes that Dovecot, OpenLDAP and Apache
write (L{popgate.cred.schemes}) and the twisted.cred checkers that read user
stores (htpasswd, Dovecot passwd-file, ...), one module each.
"""
