"""Cloud side: ingest, archive, fleet, authority, enrolment and broker, one sub-package per role."""
