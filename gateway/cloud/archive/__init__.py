"""The archive: restored objects (sealed at rest), their index, and forwarding to the reading PACS.

``store`` keeps the objects and their records, ``index`` is the contract its two SQL backends in
``gateway/adapters/`` implement, ``forward`` delivers archived objects from a durable queue."""
