"""The ledger: the cloud's own record of every resource's life, the ground truth Cove's accounting, orphan and
timing checks compare against. Served on the admin-only /admin/ledger endpoint."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from deploy.devcloud.clock import now_iso_micro as now_iso

MAX_EVENTS_PER_RECORD = 32


class Ledger:
    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.listeners: list[Callable[[str | None, str], None]] = []
        """Told (kind, id) of every change (coe/reconciler.py); kind None for an id the ledger has no record of."""

    def created(
        self,
        kind: str,
        resource_id: str,
        project_id: str,
        *,
        name: str = "",
        status: str = "",
        vcpus: int = 0,
        ram_mb: int = 0,
        disk_gb: int = 0,
        volume_gb: int = 0,
        **extra: Any,
    ) -> None:
        at = now_iso()
        self.records[resource_id] = {
            "id": resource_id,
            "kind": kind,
            "project_id": project_id,
            "name": name,
            "vcpus": vcpus,
            "ram_mb": ram_mb,
            "disk_gb": disk_gb,
            "volume_gb": volume_gb,
            "created_at": at,
            "deleted_at": None,
            "status": status,
            "events": [{"at": at, "status": status or "created"}],
            **extra,
        }
        self._bound()
        self._tell(kind, resource_id)

    def changed(self, resource_id: str, status: str, **fields: Any) -> None:
        record = self.records.get(resource_id)
        self._tell(record["kind"] if record else None, resource_id)
        if record is None:
            return
        record["status"] = status
        record.update(fields)
        events = record["events"]
        events.append({"at": now_iso(), "status": status})
        if len(events) > MAX_EVENTS_PER_RECORD:
            del events[1 : len(events) - MAX_EVENTS_PER_RECORD + 1]

    def deleted(self, resource_id: str) -> None:
        record = self.records.get(resource_id)
        self._tell(record["kind"] if record else None, resource_id)
        if record is None:
            return
        at = now_iso()
        record["deleted_at"] = at
        record["status"] = "deleted"
        record["events"].append({"at": at, "status": "deleted"})

    def query(
        self, *, kind: str | None = None, project_id: str | None = None, live: bool | None = None
    ) -> list[dict[str, Any]]:
        out = []
        for r in self.records.values():
            if kind and r["kind"] != kind:
                continue
            if project_id and r["project_id"] != project_id:
                continue
            if live is not None and (r["deleted_at"] is None) != live:
                continue
            out.append(r)
        return out

    def _tell(self, kind: str | None, resource_id: str) -> None:
        for listener in self.listeners:
            listener(kind, resource_id)

    def _bound(self) -> None:
        """Memory stays bounded: past max_records the oldest deleted records go first, then the oldest."""
        excess = len(self.records) - self.max_records
        if excess <= 0:
            return
        for rid in [rid for rid, r in self.records.items() if r["deleted_at"] is not None][:excess]:
            del self.records[rid]
            excess -= 1
        while excess > 0:
            self.records.popitem(last=False)
            excess -= 1
