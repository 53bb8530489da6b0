"""Cloud side: ingest of sealed chunk frames, the archive and its index."""
