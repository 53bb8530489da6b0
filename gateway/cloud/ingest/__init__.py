"""Ingest: chunk frames from the broker's shared subscription, verified, staged, assembled.

``service`` wires one worker to MQTT; ``pipeline`` verifies, stages and assembles (no MQTT);
``staging`` holds verified chunks until their transfer is complete; ``budget`` is what one box
may hold of the cloud; ``importer`` takes an emergency USB export into the archive."""
