# The popgate dropin: kept tiny and lazy, since twistd imports it on every run.
# Each object only names the module that does the work.

from twisted.application.service import ServiceMaker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword

from popgate.plugin_support import LazyCheckerFactory, LazyStoreFactory, LazyValidatorFactory

popgate = ServiceMaker(
    "popgate",
    "popgate.tap",
    "A POP3 server and mail gateway (RFC 1939, STLS, SASL, LMTP delivery)",
    "popgate",
)

htpasswd = LazyCheckerFactory(
    "htpasswd",
    "popgate.cred.htpasswd.make_checker",
    "An Apache htpasswd file (bcrypt, SHA-512/SHA-256 crypt, APR1-MD5, {SHA}); "
    "re-read when it changes.",
    "htpasswd:/path/to/file",
    [IUsernamePassword],
)

passwd_file = LazyCheckerFactory(
    "passwd-file",
    "popgate.cred.passwdfile.make_checker",
    "A Dovecot passwd-file (user:{SCHEME}hash:...); re-read when it changes.",
    "passwd-file:/path/to/file",
    [IUsernamePassword, IUsernameHashedPassword],
)

ldap = LazyCheckerFactory(
    "ldap",
    "popgate.cred.ldap.make_checker",
    "An LDAP directory: search for the user with a filter, then bind as the "
    "entry found.",
    "ldap:url=ldap://host/,base=dc=example,dc=org[,filter=...][,binddn=...,bindpw=...]",
    [IUsernamePassword],
    arguments="popgate.cred.ldap_settings.ARGS",
)

sql = LazyCheckerFactory(
    "sql",
    "popgate.cred.sql.make_checker",
    "A SQL database (sqlite3, PostgreSQL, MySQL/MariaDB) queried for a "
    "password hash.",
    "sql:dsn=postgresql://host/db[,query=SELECT password FROM users WHERE userid = %(user)s]",
    [IUsernamePassword, IUsernameHashedPassword],
    arguments="popgate.cred.sql_settings.ARGS",
)

maildir = LazyStoreFactory(
    "maildir",
    "popgate.stores.maildir.make_store",
    "Maildirs as Postfix, Exim and Dovecot write them; %u full user name, "
    "%n local part, %d domain. Beside Dovecot IMAP: uidl=dovecot serves "
    "Dovecot's POP3 UIDLs, deleted_flag=KEYWORD soft-deletes.",
    "maildir:/var/mail/%d/%n[,flag_updates=no][,uidl=dovecot][,uidl_format=%08Xu%08Xv]"
    "[,deleted_flag=$POP3Deleted]",
)

mbox = LazyStoreFactory(
    "mbox",
    "popgate.stores.mbox.make_store",
    "mbox spools as Postfix local(8) and Exim write them (fcntl + dotlock).",
    "mbox:/var/mail/%u",
)

postgresql = LazyStoreFactory(
    "postgresql",
    "popgate.stores.postgresql.make_store",
    "Mailboxes in a PostgreSQL database shared by any number of popgate nodes "
    "(create the schema with popgate db init).",
    "postgresql:dsn=postgresql://user@host/db[,pool_size=4][,connect_timeout=5]",
)

proxy = LazyStoreFactory(
    "proxy",
    "popgate.stores.proxy_store.make_store",
    "Mailboxes on an upstream POP3 server (a proxy for migrations, or to put TLS, "
    "penalties, limits and logs in front of it); without --auth the upstream checks "
    "the passwords. See docs/gateway.md.",
    "proxy:upstream=pop3s://HOST:PORT[,ca_file=...][,server_name=...]"
    "[,master_user=...,master_password_file=...] (with --route, upstream= is optional)",
    checks_users=True,
    routable=True,
)

imap = LazyStoreFactory(
    "imap",
    "popgate.stores.imap_store.make_store",
    "POP3 from each user's INBOX on an upstream IMAP4rev1 server (deletions committed "
    "at QUIT with UID EXPUNGE); without --auth the upstream checks the passwords. "
    "See docs/gateway.md.",
    "imap:upstream=imaps://HOST:PORT[,ca_file=...][,server_name=...]"
    "[,master_user=...,master_password_file=...] (with --route, upstream= is optional)",
    checks_users=True,
    routable=True,
)

memory = LazyStoreFactory(
    "memory",
    "popgate.stores.memory.make_store",
    "In-memory mailboxes (demos and tests); lost on restart.",
    "memory:",
)

oauth_jwt = LazyValidatorFactory(
    "jwt",
    "popgate.oauth.jwt_validator.make_validator",
    "OAuth 2.0 access tokens that are signed JWTs, checked against a JWKS file or URL "
    "(issuer, audience, expiry); needs the oauth extra (PyJWT).",
    "jwt:jwks_file=/etc/popgate/jwks.json|jwks_url=https://idp/jwks,issuer=...,audience=..."
    "[,user_claim=email][,algorithms=RS256,ES256][,leeway=30][,jwks_ttl=300]",
)

oauth_introspect = LazyValidatorFactory(
    "introspect",
    "popgate.oauth.introspect.make_validator",
    "OAuth 2.0 token introspection (RFC 7662) at the identity provider, results cached.",
    "introspect:url=https://idp/introspect,client_id=...,client_secret_file=...[,ca_file=...]"
    "[,user_field=username][,ttl=60][,timeout=5]",
)
