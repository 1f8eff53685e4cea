"""
The delivery side: how new mail gets into popgate's stores.

- L{popgate.delivery.lmtp}: an LMTP server (RFC 2033) for the SMTP server
  (L{popgate.delivery.lmtp_factory} builds it).
- L{popgate.delivery.deliver}: C{popgate deliver}, a local delivery agent
  for pipe delivery (Postfix C{pipe}/C{mailbox_command}, Exim).

Both resolve recipients through the user stores (L{users}), add the
envelope's trace headers (L{message}), and write through the mail store's
L{popgate.interfaces.IDeliveryTarget} (L{target}).
"""
