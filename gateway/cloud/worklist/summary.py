"""The worklist feed at a glance, for `mgw cloud worklist status` and the console's
``GET /api/v1/worklist/feed``: per box its routes and last snapshot, per source its polls, the
outbox. Counts, sequence numbers and times only: never patient data."""

from __future__ import annotations

from typing import Any

from gateway.cloud.worklist.store import WorklistStore


def status_doc(store: WorklistStore) -> dict[str, Any]:
    """The feed at a glance: per box, per source, the outbox (no patient data)."""
    routes: dict[str, list[str]] = {}
    for r in store.routes():
        routes.setdefault(r.box_id, []).append(f"{r.modality}@{r.station_ae_title}"
                                               + (f" ({r.station_name})" if r.station_name else ""))
    boxes = [{"box_id": f.box_id, "has_key": bool(f.worklist_key), "routes": routes.get(f.box_id, []),
              "entries": f.entries, "left_out": f.left_out, "seq": f.seq, "published_at": f.published_at,
              "cleared": f.digest == "cleared"} for f in store.feeds()]
    known = {b["box_id"] for b in boxes}
    boxes += [{"box_id": b, "has_key": False, "routes": r, "entries": 0, "left_out": 0, "seq": 0,
               "published_at": None, "cleared": False} for b, r in sorted(routes.items()) if b not in known]
    counts = store.order_counts()
    sources = [{"source": s["source"], "last_poll": s["last_poll"], "last_ok": s["last_ok"],
                "orders": counts.get(s["source"], {}), "errors": int(s["errors"]), "last_error": s["last_error"]}
               for s in store.sources()]
    return {"boxes": boxes, "sources": sources, "outbox": store.outbox_counts()}
