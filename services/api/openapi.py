"""The OpenAPI 3 document of Cove's Magnum v1 API, served at ``GET /v1/openapi.json`` (no auth).

``OPERATIONS`` describes every operation of the v1 API (templates, clusters, actions, nodegroups, certificates,
quotas, stats, mservices, federations, credentials). The served document holds the operations the running
router actually has, so it never promises a route that does not exist; tests/api/test_openapi.py fails when
the router has a route this table does not describe, and runs schemathesis against the live API.

Adding a route? Add its ``Op`` here (path in aiohttp's ``{name}`` form, method, summary, request/response
schemas by name from ``SCHEMAS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proto import labels
from services.api import microversion, patch, validation
from services.api.routing import canonical

routes = web.RouteTableDef()

OPENAPI_PATH = "/v1/openapi.json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "nullable": True, **extra}


_STR = {"type": "string"}
_NSTR = _nullable("string")
_INT = {"type": "integer"}
_NINT = _nullable("integer")
_BOOL = {"type": "boolean"}
_NBOOL = _nullable("boolean")
_LABELS = _nullable("object", additionalProperties={"type": "string"})
_LINKS = {"type": "array", "items": {"type": "object", "properties": {"href": _STR, "rel": _STR},
                                     "required": ["href", "rel"]}}
_TIME = _nullable("string", format="date-time")
_ADDRS = _nullable("array", items=_STR)

_TEMPLATE_FIELDS: dict[str, Any] = {
    "uuid": _STR, "name": _NSTR, "coe": _STR, "image_id": _STR, "flavor_id": _NSTR, "master_flavor_id": _NSTR,
    "keypair_id": _NSTR, "external_network_id": _NSTR, "fixed_network": _NSTR, "fixed_subnet": _NSTR,
    "network_driver": _NSTR, "volume_driver": _NSTR, "dns_nameserver": _NSTR, "docker_volume_size": _NINT,
    "docker_storage_driver": _NSTR, "cluster_distro": _NSTR, "apiserver_port": _NINT, "labels": _LABELS,
    "http_proxy": _NSTR, "https_proxy": _NSTR, "no_proxy": _NSTR, "registry_enabled": _NBOOL,
    "tls_disabled": _NBOOL, "public": _NBOOL, "hidden": _NBOOL, "server_type": _NSTR,
    "insecure_registry": _NSTR, "master_lb_enabled": _NBOOL, "floating_ip_enabled": _NBOOL, "tags": _NSTR,
    "driver": _NSTR, "project_id": _NSTR, "user_id": _NSTR, "links": _LINKS, "created_at": _TIME,
    "updated_at": _TIME,
}

_CLUSTER_SUMMARY: dict[str, Any] = {
    "uuid": _STR, "name": _NSTR, "cluster_template_id": _STR, "keypair": _NSTR, "docker_volume_size": _NINT,
    "labels": _LABELS, "node_count": _NINT, "master_count": _NINT, "status": _STR, "master_flavor_id": _NSTR,
    "flavor_id": _NSTR, "create_timeout": _NINT, "health_status": _NSTR, "stack_id": _NSTR, "cluster_id": _NSTR,
    "links": _LINKS,
}
_CLUSTER_FULL: dict[str, Any] = {
    **_CLUSTER_SUMMARY,
    "status_reason": _NSTR, "health_status_reason": _nullable("object"), "discovery_url": _NSTR,
    "api_address": _NSTR, "coe_version": _NSTR, "container_version": _NSTR, "project_id": _NSTR,
    "user_id": _NSTR, "node_addresses": _ADDRS, "master_addresses": _ADDRS, "faults": _nullable("object"),
    "fixed_network": _NSTR, "fixed_subnet": _NSTR, "floating_ip_enabled": _NBOOL, "master_lb_enabled": _NBOOL,
    "merge_labels": _NBOOL, "labels_overridden": _LABELS, "labels_added": _LABELS, "labels_skipped": _LABELS,
    "created_at": _TIME, "updated_at": _TIME,
}
_NODEGROUP: dict[str, Any] = {
    "id": _NINT, "uuid": _STR, "name": _STR, "cluster_id": _NSTR, "project_id": _NSTR,
    "docker_volume_size": _NINT, "labels": _LABELS, "links": _LINKS, "flavor_id": _NSTR, "image_id": _NSTR,
    "node_addresses": _ADDRS, "node_count": _NINT, "role": _NSTR, "min_node_count": _NINT,
    "max_node_count": _NINT, "is_default": _NBOOL, "stack_id": _NSTR, "status": _NSTR, "status_reason": _NSTR,
    "version": _NSTR, "merge_labels": _NBOOL, "labels_overridden": _LABELS, "labels_added": _LABELS,
    "labels_skipped": _LABELS, "node_labels": _LABELS, "node_taints": _nullable("array", items={"type": "object"}),
    "created_at": _TIME, "updated_at": _TIME,
}


def _template_create() -> dict[str, Any]:
    """What a template create accepts (services/api/validation.py): these fields only, strings of 1 to 255
    characters, the COE, server type and drivers Cove supports, Magnum's bounds on sizes and ports; ``coe`` and
    ``image_id`` mandatory."""
    props: dict[str, Any] = {}
    for name, schema in _TEMPLATE_FIELDS.items():
        if name in ("uuid", "links", "created_at", "updated_at", "project_id", "user_id"):
            continue
        if name in validation.TEMPLATE_STR_FIELDS:
            schema = {**schema, "minLength": 1, "maxLength": 255}
        props[name] = schema
    props["coe"] = {"type": "string", "enum": list(validation.COES)}
    props["server_type"] = _nullable("string", enum=[*validation.SERVER_TYPES, None])
    props["network_driver"] = _nullable(
        "string", enum=[*dict.fromkeys(d for ds in labels.COE_NETWORK_DRIVERS.values() for d in ds), None])
    props["volume_driver"] = _nullable(
        "string", enum=[*dict.fromkeys(d for ds in validation.VOLUME_DRIVERS.values() for d in ds), None])
    props["docker_volume_size"] = _nullable("integer", minimum=1)
    props["apiserver_port"] = _nullable("integer", minimum=1024, maximum=65535)
    return {**_obj(props, ["coe", "image_id"]), "additionalProperties": False}


_QUOTA_INPUT: dict[str, Any] = {
    "project_id": {"type": "string", "minLength": 1}, "resource": {"type": "string", "enum": ["Cluster"]},
    "hard_limit": {"type": "integer", "minimum": 0, "maximum": validation.SQL_INT_MAX},
}
_QUOTA: dict[str, Any] = {"id": _NINT, "project_id": _STR, "resource": _STR, "hard_limit": _INT,
                          "created_at": _TIME, "updated_at": _TIME}
_MSERVICE: dict[str, Any] = {"id": _INT, "host": _NSTR, "binary": _STR, "state": _STR, "report_count": _NINT,
                             "disabled": _NBOOL, "disabled_reason": _NSTR, "created_at": _TIME,
                             "updated_at": _TIME}
_FEDERATION: dict[str, Any] = {"uuid": _STR, "name": _NSTR, "hostcluster_id": _NSTR,
                               "member_ids": _nullable("array", items=_STR), "status": _NSTR,
                               "status_reason": _NSTR, "properties": _nullable("object"), "links": _LINKS,
                               "created_at": _TIME, "updated_at": _TIME}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def _collection(key: str, item: str) -> dict[str, Any]:
    return _obj({key: {"type": "array", "items": _ref(item)}, "next": _STR}, [key])


_PATCH_PATH = {"type": "string", "pattern": patch.PATH_RE.pattern}
_JSON_PATCH = {"type": "array", "minItems": 1, "items": {"oneOf": [
    {**_obj({"op": {"type": "string", "enum": ["add", "replace"]}, "path": _PATCH_PATH, "value": {}},
            ["op", "path", "value"]), "additionalProperties": False},
    {**_obj({"op": {"type": "string", "enum": ["remove"]}, "path": _PATCH_PATH, "value": {}}, ["op", "path"]),
     "additionalProperties": False},
]}}
"""Magnum's JSON patch: a non-empty list of operations with no other keys; ``add`` and ``replace`` carry a value;
paths are ``/field`` (or ``/labels/key``)."""

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"errors": {"type": "array", "minItems": 1, "items": _obj({
        "request_id": _STR, "code": _STR, "status": _INT, "title": _STR, "detail": _STR, "links": {"type": "array"},
        "min_version": _STR, "max_version": _STR}, ["status", "title", "detail"])}}, ["errors"]),
    "Root": _obj({"name": _STR, "description": _STR, "versions": {"type": "array"}}, ["versions"]),
    "V1": _obj({"id": _STR, "links": _LINKS, "media_types": {"type": "array"}}, ["id"]),
    "UuidAccepted": _obj({"uuid": _STR}, ["uuid"]),
    "ClusterTemplate": _obj(_TEMPLATE_FIELDS, ["uuid"]),
    "ClusterTemplateList": _collection("clustertemplates", "ClusterTemplate"),
    "ClusterTemplateCreate": _template_create(),
    "ClusterSummary": _obj(_CLUSTER_SUMMARY, ["uuid"]),
    "Cluster": _obj(_CLUSTER_FULL, ["uuid"]),
    "ClusterList": _collection("clusters", "ClusterSummary"),
    "ClusterDetailList": _collection("clusters", "Cluster"),
    "ClusterCreate": _obj({
        "name": _NSTR, "cluster_template_id": _STR, "keypair": _NSTR, "node_count": _NINT, "master_count": _NINT,
        "docker_volume_size": _NINT, "labels": _LABELS, "master_flavor_id": _NSTR, "flavor_id": _NSTR,
        "fixed_network": _NSTR, "fixed_subnet": _NSTR, "floating_ip_enabled": _NBOOL,
        "master_lb_enabled": _NBOOL, "create_timeout": _NINT, "discovery_url": _NSTR, "merge_labels": _NBOOL,
    }, ["cluster_template_id"]),
    "JsonPatch": _JSON_PATCH,
    "ClusterResize": _obj({"node_count": _INT, "nodes_to_remove": _nullable("array", items=_STR),
                           "nodegroup": _NSTR}, ["node_count"]),
    "ClusterUpgrade": _obj({"cluster_template": _STR, "max_batch_size": _NINT, "nodegroup": _NSTR},
                           ["cluster_template"]),
    "Nodegroup": _obj(_NODEGROUP, ["uuid"]),
    "NodegroupList": _collection("nodegroups", "Nodegroup"),
    "NodegroupCreate": _obj({k: _NODEGROUP[k] for k in (
        "name", "flavor_id", "image_id", "node_count", "role", "min_node_count", "max_node_count",
        "docker_volume_size", "labels", "merge_labels", "node_labels", "node_taints")}, ["name"]),
    "Certificate": _obj({"cluster_uuid": _STR, "pem": _STR, "csr": _STR, "ca_cert_type": _NSTR,
                         "links": _LINKS}, ["cluster_uuid", "pem"]),
    "CertificateSign": _obj({"cluster_uuid": _STR, "csr": _STR, "ca_cert_type": _NSTR},
                            ["cluster_uuid", "csr"]),
    "Quota": _obj(_QUOTA, ["project_id", "resource", "hard_limit"]),
    "QuotaList": _collection("quotas", "Quota"),
    "QuotaCreate": _obj(_QUOTA_INPUT, ["project_id"]),
    "QuotaUpdate": _obj(_QUOTA_INPUT, ["hard_limit"]),
    "Stats": _obj({"clusters": _INT, "nodes": _INT, "coes": {
        "type": "object", "description": "Cove: the same counts per COE",
        "additionalProperties": _obj({"clusters": _INT, "nodes": _INT}, ["clusters", "nodes"])}},
        ["clusters", "nodes"]),
    "Usage": _obj({
        "project_id": _NSTR, "start": _NSTR, "end": _STR,
        "group_by": {"type": "string", "enum": ["project", "cluster", "resource"]},
        "usage": {"type": "array", "items": _obj({
            "project_id": _STR, "cluster_id": _NSTR, "resource_kind": _NSTR, "resource_id": _NSTR,
            "resource_name": _NSTR, "vcpus": _nullable("integer"), "ram_mb": _nullable("integer"),
            "size_gb": _nullable("integer"), "started_at": _NSTR, "ended_at": _NSTR,
            "billed_seconds": _nullable("number"), "vcpu_hours": {"type": "number"},
            "ram_gb_hours": {"type": "number"}, "volume_gb_hours": {"type": "number"},
            "floating_ip_hours": {"type": "number"}, "load_balancer_hours": {"type": "number"},
            "server_hours": {"type": "number"}, "cluster_hours": {"type": "number"},
        }, ["project_id"])},
    }, ["end", "group_by", "usage"]),
    "MServiceList": _obj({"mservices": {"type": "array", "items": _obj(_MSERVICE, ["id", "binary", "state"])},
                          "next": _STR}, ["mservices"]),
    "ControlPlane": _obj({
        "time": _STR,
        "services": {"type": "array", "items": _obj({
            "service": _STR, "host": _STR, "pid": _INT, "state": _STR, "version": _NSTR, "started_at": _NSTR,
            "last_heartbeat": _NSTR, "age_seconds": {"type": "number"}}, ["service", "host", "state"])},
        "consumers": {"type": "array", "items": _obj({
            "name": _STR, "pending": _INT, "ack_pending": _INT, "redelivered": _INT, "delivered_seq": _NINT,
            "ack_floor_seq": _NINT}, ["name", "pending", "ack_pending"])},
        "dead_letters": _obj({
            "total": _INT, "by_consumer": {"type": "object", "additionalProperties": _INT},
            "recent": {"type": "array", "items": _obj({
                "id": _INT, "time": _NSTR, "reason": _NSTR, "consumer": _NSTR, "subject": _NSTR,
                "stream_seq": _NSTR, "deliveries": _NSTR}, ["id"])}}, ["total", "by_consumer", "recent"]),
        "build_queue": {"type": "array", "items": _obj({
            "uuid": _STR, "name": _NSTR, "project_id": _STR, "status": _STR, "status_reason": _NSTR,
            "waiting": _BOOL, "created_at": _NSTR}, ["uuid", "status", "waiting"])},
    }, ["services", "consumers", "dead_letters", "build_queue"]),
    "Federation": _obj(_FEDERATION, ["uuid"]),
    "FederationList": _collection("federations", "Federation"),
    "FederationCreate": _obj({"name": _NSTR, "hostcluster_id": _STR, "member_ids": _nullable("array", items=_STR),
                              "properties": _nullable("object")}, ["hostcluster_id"]),
}

_PAGING = ("marker", "limit", "sort_key", "sort_dir")


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    ok: int = 200
    response: str | None = None
    body: str | None = None
    query: tuple[str, ...] = ()
    public: bool = False
    extra_ok: tuple[int, ...] = field(default=())
    media: str = "application/json"


OPERATIONS: tuple[Op, ...] = (
    Op("GET", "/", "Version documents", "root", response="Root", public=True),
    Op("GET", "/v1", "The v1 version document", "root", response="V1", public=True),
    Op("GET", "/v1/", "The v1 version document", "root", response="V1", public=True),
    Op("GET", OPENAPI_PATH, "This document", "root", public=True),
    # Cluster templates.
    Op("GET", "/v1/clustertemplates", "List cluster templates", "clustertemplates",
       response="ClusterTemplateList", query=_PAGING),
    Op("GET", "/v1/clustertemplates/detail", "List cluster templates in full", "clustertemplates",
       response="ClusterTemplateList", query=_PAGING),
    Op("GET", "/v1/clustertemplates/{ident}", "Show a cluster template", "clustertemplates",
       response="ClusterTemplate"),
    Op("POST", "/v1/clustertemplates", "Create a cluster template", "clustertemplates", ok=201,
       response="ClusterTemplate", body="ClusterTemplateCreate"),
    Op("PATCH", "/v1/clustertemplates/{ident}", "Update a cluster template (JSON patch)", "clustertemplates",
       response="ClusterTemplate", body="JsonPatch"),
    Op("DELETE", "/v1/clustertemplates/{ident}", "Delete a cluster template", "clustertemplates", ok=204),
    # Clusters.
    Op("GET", "/v1/clusters", "List clusters", "clusters", response="ClusterList", query=_PAGING),
    Op("GET", "/v1/clusters/detail", "List clusters in full", "clusters", response="ClusterDetailList",
       query=_PAGING),
    Op("GET", "/v1/clusters/{ident}", "Show a cluster", "clusters", response="Cluster"),
    Op("POST", "/v1/clusters", "Create a cluster", "clusters", ok=202, response="UuidAccepted",
       body="ClusterCreate"),
    Op("PATCH", "/v1/clusters/{ident}", "Update a cluster (JSON patch)", "clusters", ok=202,
       response="UuidAccepted", body="JsonPatch", query=("rollback",)),
    Op("DELETE", "/v1/clusters/{ident}", "Delete a cluster", "clusters", ok=204),
    Op("PATCH", "/v1/clusters/{ident}/", "Update a cluster (JSON patch; trailing-slash form)", "clusters", ok=202,
       response="UuidAccepted", body="JsonPatch", query=("rollback",)),
    Op("POST", "/v1/clusters/{ident}/actions/resize", "Resize a cluster (>=1.7)", "actions", ok=202,
       response="UuidAccepted", body="ClusterResize"),
    Op("POST", "/v1/clusters/{ident}/actions/upgrade", "Upgrade a cluster (>=1.8)", "actions", ok=202,
       response="UuidAccepted", body="ClusterUpgrade"),
    # Nodegroups (>=1.9; magnumclient uses a trailing slash on the collection).
    Op("GET", "/v1/clusters/{cluster}/nodegroups", "List nodegroups", "nodegroups",
       response="NodegroupList", query=(*_PAGING, "role")),
    Op("GET", "/v1/clusters/{cluster}/nodegroups/", "List nodegroups", "nodegroups",
       response="NodegroupList", query=(*_PAGING, "role")),
    Op("GET", "/v1/clusters/{cluster}/nodegroups/{ng}", "Show a nodegroup", "nodegroups",
       response="Nodegroup"),
    Op("POST", "/v1/clusters/{cluster}/nodegroups", "Create a nodegroup", "nodegroups", ok=202,
       response="Nodegroup", body="NodegroupCreate"),
    Op("POST", "/v1/clusters/{cluster}/nodegroups/", "Create a nodegroup", "nodegroups", ok=202,
       response="Nodegroup", body="NodegroupCreate"),
    Op("PATCH", "/v1/clusters/{cluster}/nodegroups/{ng}", "Update a nodegroup (JSON patch)",
       "nodegroups", ok=202, response="Nodegroup", body="JsonPatch"),
    Op("DELETE", "/v1/clusters/{cluster}/nodegroups/{ng}", "Delete a nodegroup",
       "nodegroups", ok=204),
    # Certificates.
    Op("GET", "/v1/certificates/{ident}", "The cluster's CA certificate", "certificates",
       response="Certificate", query=("ca_cert_type",)),
    Op("POST", "/v1/certificates", "Sign a CSR with the cluster's CA", "certificates", ok=201,
       response="Certificate", body="CertificateSign"),
    Op("PATCH", "/v1/certificates/{ident}", "Rotate the cluster's CA", "certificates", ok=202,
       response="UuidAccepted"),
    # Credentials (>=1.12).
    Op("PATCH", "/v1/credentials/{ident}", "Rotate the cluster's credentials", "credentials", ok=202,
       response="UuidAccepted"),
    # Quotas.
    Op("GET", "/v1/quotas", "List quotas", "quotas", response="QuotaList", query=(*_PAGING, "all_tenants")),
    Op("GET", "/v1/quotas/{project_id}/{resource}", "Show a quota", "quotas", response="Quota"),
    Op("POST", "/v1/quotas", "Create a quota", "quotas", ok=201, response="Quota", body="QuotaCreate"),
    Op("PATCH", "/v1/quotas/{project_id}/{resource}", "Update a quota", "quotas", ok=202, response="Quota",
       body="QuotaUpdate"),
    Op("DELETE", "/v1/quotas/{project_id}/{resource}", "Delete a quota", "quotas", ok=204),
    # Stats, services.
    Op("GET", "/v1/stats", "Cluster and node counts", "stats", response="Stats", query=("project_id", "type")),
    Op("GET", "/v1/mservices", "Magnum services", "mservices", response="MServiceList", query=_PAGING),
    # Federations (stub).
    Op("GET", "/v1/federations", "List federations", "federations", response="FederationList", query=_PAGING),
    Op("GET", "/v1/federations/detail", "List federations in full", "federations", response="FederationList",
       query=_PAGING),
    Op("GET", "/v1/federations/{ident}", "Show a federation", "federations", response="Federation"),
    Op("POST", "/v1/federations", "Create a federation", "federations", ok=202, response="UuidAccepted",
       body="FederationCreate"),
    Op("PATCH", "/v1/federations/{ident}", "Update a federation (JSON patch)", "federations", ok=202,
       response="UuidAccepted", body="JsonPatch"),
    Op("DELETE", "/v1/federations/{ident}", "Delete a federation", "federations", ok=204),
    # Events (a Cove extension): server-sent events, one per stored event, id = its COVE_EVENTS sequence.
    Op("GET", "/v1/events", "Live events of the caller's project (text/event-stream; resume with Last-Event-ID)",
       "events", query=("cluster", "type", "project_id", "last_event_id"), media="text/event-stream"),
    # Usage (a Cove extension): JSON, or CSV with Accept: text/csv.
    Op("GET", "/v1/usage", "Usage over [start, end) by project, cluster or resource (text/csv with Accept: text/csv)",
       "usage", response="Usage", query=("start", "end", "group_by", "project_id", "cluster_id", "format")),
    # The control plane at a glance (a Cove extension, admin): heartbeats, consumer lag, dead letters, build queue.
    Op("GET", "/v1/controlplane", "Service heartbeats, consumer lag, dead letters and the build queue (admin)",
       "controlplane", response="ControlPlane"),
)

_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "marker": _STR, "limit": {"type": "integer", "minimum": 1}, "sort_key": _STR,
    "sort_dir": {"type": "string", "enum": ["asc", "desc"]}, "rollback": _STR, "role": _STR,
    "ca_cert_type": _STR, "all_tenants": _STR, "project_id": _STR, "type": _STR,
    "cluster": _STR, "last_event_id": {"type": "integer", "minimum": 0},
    "start": {"type": "string", "format": "date-time"}, "end": {"type": "string", "format": "date-time"},
    "group_by": {"type": "string", "enum": ["project", "cluster", "resource"]}, "cluster_id": _STR,
    "format": {"type": "string", "enum": ["json", "csv"]},
}

_ERROR = {"description": "Magnum's error body", "content": {"application/json": {"schema": _ref("Error")}}}


def _operation(op: Op) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _path_params(op.path)
    ]
    params += [{"name": q, "in": "query", "required": False, "schema": _QUERY_SCHEMAS.get(q, _STR)}
               for q in op.query]
    if op.path.startswith("/v1"):
        params.append({"name": microversion.HEADER, "in": "header", "required": False,
                       "schema": {"type": "string"},
                       "description": "e.g. 'container-infra 1.14' or 'container-infra latest'"})
    ok: dict[str, Any] = {"description": "Success"}
    if op.ok != 204:
        schema: dict[str, Any] = _ref(op.response) if op.response else {"type": "object"}
        if op.media == "text/event-stream":  # each event, as SSE parsers (and schemathesis) see it
            schema = {"type": "object", "properties": {
                "id": _STR, "event": _STR, "retry": {"type": ["integer", "string"]},
                "data": {"type": "string", "description": "the event's envelope as JSON (docs/events.md)"}}}
        elif op.media != "application/json":
            schema = {"type": "string"}
        ok["content"] = {op.media: {"schema": schema}}
        if op.tag == "usage":
            ok["content"]["text/csv"] = {"schema": {"type": "string", "description": "the same rows, a header first"}}
    out: dict[str, Any] = {
        "summary": op.summary,
        "tags": [op.tag],
        "operationId": f"{op.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', op.path.lower()).strip('_') or 'root'}",
        "parameters": params,
        "responses": {str(op.ok): ok, "default": _ERROR},
    }
    if op.public:
        out["security"] = []
    if op.body:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.body)}}}
    return out


def _path_params(path: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", path)


def document(served: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document; ``served`` (method, path) limits it to what the router has."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        if served is not None and (op.method, op.path) not in served:
            continue
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Cove: OpenStack Magnum v1 API",
            "version": str(microversion.MAX),
            "description": "Magnum v1 API compatible Containers-as-a-Service. Microversions "
                           f"{microversion.MIN}..{microversion.MAX} via the OpenStack-API-Version header. "
                           "Every path is also served with a trailing slash (`/v1/clusters/?limit=1`, as "
                           "python-magnumclient sends it): the slash is optional everywhere and changes nothing.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"keystone": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}},
        },
        "security": [{"keystone": []}],
        "paths": paths,
    }


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, HEAD excluded (aiohttp adds it to every GET), each path in
    its slash-less spelling (the router serves both: services/api/routing.py)."""
    out: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        if route.resource is not None and route.resource.canonical.startswith("/console"):
            continue  # the web console's page, configuration and login (services/api/console.py), not the v1 API
        out.add((route.method, canonical(route.resource.canonical) if route.resource else ""))
    return out


@routes.get(OPENAPI_PATH)
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(router_operations(request.app)))
