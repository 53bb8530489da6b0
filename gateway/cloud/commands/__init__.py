"""Remote commands, the cloud side (docs/operations.md, "Remote operations"): queue, publisher, results, waves."""
