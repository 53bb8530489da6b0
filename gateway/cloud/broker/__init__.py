"""The broker's side of the fleet: what the cloud needs from any broker (``profile``), the policy
every broker enforces (``policy``), the fleet PKI's files for it (``pki``), and one profile per
broker product (``mosquitto``, ``emqx``), by name in ``registry``."""
