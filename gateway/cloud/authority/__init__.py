"""Trust the cloud hands out: the fleet CA (``ca``) and the ack signing keys (``ack_keys``)."""
