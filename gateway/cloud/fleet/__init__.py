"""The fleet: registry of boxes, utilisation records, alerts, dead letters, the API and dashboard.

``service`` is ``mgw cloud fleet``, ``http`` its API, /metrics and dashboard files (``web/``),
``store`` the fleet database's shared SQL, ``analytics`` the utilisation documents, and
``deadletter`` the poison-message record every cloud service writes into the fleet store."""
