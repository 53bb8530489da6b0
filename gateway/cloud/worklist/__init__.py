"""The cloud side of the worklist feed (docs/protocol.md, "Worklist feed"), run by the fleet service:
orders from the site's RIS, routes, per-box sealed snapshots, performed statuses back to the RIS."""
