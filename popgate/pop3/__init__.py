"""The POP3 protocol: parsing, the session state machine, replies."""
