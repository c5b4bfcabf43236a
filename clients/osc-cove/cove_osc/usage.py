"""``openstack coe usage list``: what a project's clusters used over a window, from Cove's ``GET /v1/usage``.

    openstack coe usage list [--start T] [--end T] [--group-by project|cluster|resource] [--project ID]
                             [--cluster ID] [-f table|json|csv|value ...]

Admins see every project unless ``--project`` names one; members and readers see their own project (another one is
refused with a 403). Times are ISO 8601 (a date is midnight UTC). Columns are the API's keys, in its order.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from osc_lib.command import command

GROUPS = ("project", "cluster", "resource")


class ListUsage(command.Lister):
    _description = "List usage (vCPU-, RAM-GB-, volume-GB-, floating-IP-, load-balancer- and cluster-hours)"

    def get_parser(self, prog_name: str) -> Any:
        parser = super().get_parser(prog_name)
        parser.add_argument("--start", metavar="<time>", help="Start of the window (ISO 8601; inclusive)")
        parser.add_argument("--end", metavar="<time>", help="End of the window (ISO 8601; exclusive; default now)")
        parser.add_argument("--group-by", metavar="<group>", choices=GROUPS, default="project",
                            help="One row per project (default), cluster or resource")
        parser.add_argument("--project", metavar="<project-id>",
                            help="The project (admins: any; default every project for admins, else your own)")
        parser.add_argument("--cluster", metavar="<cluster-id>", help="Only this cluster")
        return parser

    def take_action(self, parsed_args: Any) -> tuple[list[str], list[list[Any]]]:
        client = self.app.client_manager.container_infra
        query = {"group_by": parsed_args.group_by}
        for key, value in (("start", parsed_args.start), ("end", parsed_args.end),
                           ("project_id", parsed_args.project), ("cluster_id", parsed_args.cluster)):
            if value:
                query[key] = value
        _, body = client.http_client.json_request("GET", f"/v1/usage?{urlencode(query)}")
        rows = body.get("usage") or []
        columns = list(body.get("columns") or (rows[0].keys() if rows else _columns(parsed_args.group_by)))
        return columns, [[row.get(c) for c in columns] for row in rows]


def _columns(group_by: str) -> list[str]:
    """The API's columns when no row came back (kept in step with services/api/resources/usage.py)."""
    out = ["project_id"]
    if group_by != "project":
        out.append("cluster_id")
    if group_by == "resource":
        out += ["resource_kind", "resource_id", "resource_name", "vcpus", "ram_mb", "size_gb", "started_at",
                "ended_at", "billed_seconds"]
    return out + ["vcpu_hours", "ram_gb_hours", "volume_gb_hours", "floating_ip_hours", "load_balancer_hours",
                  "server_hours", "cluster_hours"]
