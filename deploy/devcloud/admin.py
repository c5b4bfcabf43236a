"""The devcloud's own admin endpoints (not OpenStack APIs): the ledger, fault injection, the timing model's time
factor and request statistics. All but /healthz need a token with the admin role."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from deploy.devcloud.config import ApiFault, CoeFault, LoadBalancerFault, ServerFault, VolumeFault
from deploy.devcloud.state import cloud_of
from deploy.devcloud.stats import STATS
from deploy.devcloud.web import Routes, ctx, json_response, keystone_error, qbool, read_json

routes = Routes("admin")
ERR = keystone_error


def _admin(request: web.Request) -> None:
    if not ctx(request).is_admin:
        raise ERR(403, "You are not authorized to perform the requested action: the devcloud admin API.")


@routes.get("/healthz", public=True)
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/admin/ledger")
async def ledger(request: web.Request) -> web.Response:
    """Every resource's create, state-change and delete times, owner project and size.
    Filters: kind (server, volume, load_balancer, network, port, floating_ip, ...), project_id, live=true|false."""
    _admin(request)
    cloud = cloud_of(request)
    records = cloud.ledger.query(
        kind=request.query.get("kind"),
        project_id=request.query.get("project_id"),
        live=qbool(request.query.get("live")),
    )
    return json_response({"records": records, "count": len(records)})


@routes.get("/admin/stats")
async def stats(request: web.Request) -> web.Response:
    _admin(request)
    cloud = cloud_of(request)
    body = request.app[STATS].as_dict()
    body["resources"] = {kind: len(table) for kind, table in sorted(cloud.tables.items())}
    body["tokens"] = len(cloud.identity.tokens)
    body["builds"] = {"active": cloud.builds.active, "waiting": len(cloud.builds.waiting)}
    return json_response(body)


def _faults_view(request: web.Request) -> dict[str, Any]:
    return msgspec.to_builtins(cloud_of(request).faults)


@routes.get("/admin/faults")
async def get_faults(request: web.Request) -> web.Response:
    _admin(request)
    return json_response(_faults_view(request))


@routes.put("/admin/faults")
async def set_faults(request: web.Request) -> web.Response:
    """Replace the boot and load balancer failure rates and the list of API faults; server and zone faults have their own calls."""
    _admin(request)
    cloud = cloud_of(request)
    body = await read_json(request, ERR)
    try:
        if "boot_failure_rate" in body:
            rate = float(body["boot_failure_rate"])
            if not 0.0 <= rate <= 1.0:
                raise ValueError("boot_failure_rate must be within [0, 1]")
            cloud.faults.boot_failure_rate = rate
        if "lb_failure_rate" in body:
            lb_rate = float(body["lb_failure_rate"])
            if not 0.0 <= lb_rate <= 1.0:
                raise ValueError("lb_failure_rate must be within [0, 1]")
            cloud.faults.lb_failure_rate = lb_rate
        if "api" in body:
            faults = msgspec.convert(body["api"], list[ApiFault])
            for f in faults:
                f.id = f.id or str(uuid.uuid4())
            cloud.faults.api = faults
    except (ValueError, TypeError, msgspec.ValidationError) as exc:
        raise ERR(400, f"Invalid faults: {exc}") from None
    return json_response(_faults_view(request))


@routes.post("/admin/faults/api")
async def add_api_fault(request: web.Request) -> web.Response:
    _admin(request)
    try:
        fault = msgspec.convert(await read_json(request, ERR), ApiFault)
    except msgspec.ValidationError as exc:
        raise ERR(400, f"Invalid fault: {exc}") from None
    fault.id = fault.id or str(uuid.uuid4())
    cloud_of(request).faults.api.append(fault)
    return json_response(msgspec.to_builtins(fault), status=201)


@routes.post("/admin/faults/servers")
async def add_server_fault(request: web.Request) -> web.Response:
    """A named server (or id) goes to ERROR or vanishes `after_seconds` from now if it exists, or from when it
    becomes ACTIVE if it does not exist yet."""
    _admin(request)
    from deploy.devcloud import compute

    try:
        fault = msgspec.convert(await read_json(request, ERR), ServerFault)
    except msgspec.ValidationError as exc:
        raise ERR(400, f"Invalid fault: {exc}") from None
    fault.id = fault.id or str(uuid.uuid4())
    cloud = cloud_of(request)
    if not compute.apply_server_fault(cloud, fault):
        cloud.faults.servers.append(fault)
    return json_response(msgspec.to_builtins(fault), status=201)


@routes.post("/admin/faults/volumes")
async def add_volume_fault(request: web.Request) -> web.Response:
    """A named volume (or id) goes to ``error`` or vanishes from Cinder now (404 when there is none)."""
    _admin(request)
    from deploy.devcloud import volume

    try:
        fault = msgspec.convert(await read_json(request, ERR), VolumeFault)
    except msgspec.ValidationError as exc:
        raise ERR(400, f"Invalid fault: {exc}") from None
    fault.id = fault.id or str(uuid.uuid4())
    if not volume.apply_volume_fault(cloud_of(request), fault):
        raise ERR(404, f"No volume named {fault.name}")
    return json_response(msgspec.to_builtins(fault), status=201)


@routes.post("/admin/faults/load_balancers")
async def add_load_balancer_fault(request: web.Request) -> web.Response:
    """A named load balancer (or id) takes the given provisioning and operating statuses now (404: none)."""
    _admin(request)
    from deploy.devcloud import loadbalancer

    try:
        fault = msgspec.convert(await read_json(request, ERR), LoadBalancerFault)
    except msgspec.ValidationError as exc:
        raise ERR(400, f"Invalid fault: {exc}") from None
    fault.id = fault.id or str(uuid.uuid4())
    if not loadbalancer.apply_load_balancer_fault(cloud_of(request), fault):
        raise ERR(404, f"No load balancer named {fault.name}")
    return json_response(msgspec.to_builtins(fault), status=201)


@routes.post("/admin/faults/coe")
async def add_coe_fault(request: web.Request) -> web.Response:
    """A cluster's COE stand-in answers its health endpoint with ``api_status`` and reports the ``not_ready``
    nodes not ready, until the faults are cleared (``DELETE /admin/faults``); a new fault for the same cluster
    replaces the last."""
    _admin(request)
    try:
        fault = msgspec.convert(await read_json(request, ERR), CoeFault)
        if fault.api_status and not 100 <= fault.api_status <= 599:
            raise ValueError("api_status must be 0 or an HTTP status")
    except (ValueError, msgspec.ValidationError) as exc:
        raise ERR(400, f"Invalid fault: {exc}") from None
    fault.id = fault.id or str(uuid.uuid4())
    cloud = cloud_of(request)
    cloud.faults.coe = [f for f in cloud.faults.coe if f.cluster_id != fault.cluster_id] + [fault]
    cloud.ledger.changed(fault.cluster_id, "coe-fault")  # no record: the COE stand-ins are told all the same
    return json_response(msgspec.to_builtins(fault), status=201)


@routes.post("/admin/faults/zones/{az}/down")
async def zone_down(request: web.Request) -> web.Response:
    _admin(request)
    from deploy.devcloud import compute

    cloud = cloud_of(request)
    az = request.match_info["az"]
    if az not in cloud.config.availability_zones:
        raise ERR(404, f"Unknown availability zone {az}")
    if az not in cloud.faults.down_availability_zones:
        cloud.faults.down_availability_zones.append(az)
    compute.apply_zone_down(cloud, az)
    return json_response(_faults_view(request))


@routes.post("/admin/faults/zones/{az}/up")
async def zone_up(request: web.Request) -> web.Response:
    _admin(request)
    cloud = cloud_of(request)
    az = request.match_info["az"]
    if az in cloud.faults.down_availability_zones:
        cloud.faults.down_availability_zones.remove(az)
    return json_response(_faults_view(request))


@routes.delete("/admin/faults")
async def clear_faults(request: web.Request) -> web.Response:
    _admin(request)
    cloud = cloud_of(request)
    cloud.faults.boot_failure_rate = 0.0
    cloud.faults.lb_failure_rate = 0.0
    cloud.faults.api = []
    cloud.faults.servers = []
    cloud.faults.down_availability_zones = []
    cloud.faults.coe = []
    cloud.ledger.changed("", "coe-fault")  # the COE stand-ins re-plan (a Swarm node comes back up)
    return web.Response(status=204)


@routes.get("/admin/timing")
async def get_timing(request: web.Request) -> web.Response:
    _admin(request)
    cloud = cloud_of(request)
    # the live factor (PUT /admin/timing changes it), not the configured one
    return json_response({**msgspec.to_builtins(cloud.config.timing), "time_factor": cloud.time_factor})


@routes.put("/admin/timing")
async def set_timing(request: web.Request) -> web.Response:
    """Change the time factor at run time (e.g. 0 for an instantaneous cloud in a benchmark)."""
    _admin(request)
    cloud = cloud_of(request)
    body = await read_json(request, ERR)
    try:
        factor = float(body["time_factor"])
        if factor < 0:
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise ERR(400, "time_factor must be a number >= 0") from None
    cloud.time_factor = factor
    return json_response({"time_factor": cloud.time_factor})
