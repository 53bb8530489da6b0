"""The broker's side of the fleet: its PKI and guard plugin (``pki``) and EMQX policy (``emqx``)."""
