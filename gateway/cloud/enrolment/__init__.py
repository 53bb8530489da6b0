"""Enrolment over HTTPS: the endpoint (``server``) and what guards it (``guard``)."""
