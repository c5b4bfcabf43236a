"""Unit tests of the API's pure logic: microversions, paging, the error body, validation, status machine."""

from __future__ import annotations

import pytest

from proto import clusterspec
from services.api import microversion, paging, status, validation
from services.api.errors import ApiError, error_body, title_of
from services.api.microversion import Microversion
from services.api.store import CLUSTER_SORT_KEYS, Page

# ----------------------------------------------------------------------------- microversions


@pytest.mark.parametrize(
    ("header", "expected", "service"),
    [
        (None, "1.1", "container-infra"),
        ("", "1.1", "container-infra"),
        ("container-infra latest", "1.14", "container-infra"),
        ("container-infra 1.10", "1.10", "container-infra"),
        ("Container-Infrastructure-Management 1.13", "1.13", "container-infrastructure-management"),
        ("compute 2.1, container-infra 1.9", "1.9", "container-infra"),
        ("compute 2.50", "1.1", "container-infra"),
    ],
)
def test_microversion_parse(header: str | None, expected: str, service: str) -> None:
    version, svc = microversion.parse(header)
    assert str(version) == expected
    assert svc == service


@pytest.mark.parametrize("header", ["container-infra 1.15", "container-infra 1.0", "container-infra 2.1",
                                    "container-infra abc", "container-infra", "garbage"])
def test_microversion_out_of_range_is_406(header: str) -> None:
    with pytest.raises(ApiError) as info:
        microversion.parse(header)
    assert info.value.status == 406
    assert info.value.extra["code"] == "magnum.microversion-unsupported"
    assert info.value.extra["max_version"] == "1.14"


def test_microversion_ordering_and_headers() -> None:
    assert Microversion(1, 10) > Microversion(1, 9)
    assert Microversion(1, 13).at_least(1, 13) and not Microversion(1, 12).at_least(1, 13)
    headers = microversion.response_headers(Microversion(1, 5), "container-infra")
    assert headers["OpenStack-API-Version"] == "container-infra 1.5"
    assert headers["OpenStack-API-Minimum-Version"] == "container-infra 1.1"
    assert headers["OpenStack-API-Maximum-Version"] == "container-infra 1.14"


# ----------------------------------------------------------------------------- paging


def test_page_defaults_and_cap() -> None:
    page = paging.parse_page({}, CLUSTER_SORT_KEYS)
    assert page == Page(limit=1000, sort_key="id", sort_dir="asc", marker=None)
    assert paging.parse_page({"limit": "5000"}, CLUSTER_SORT_KEYS).limit == 1000
    page = paging.parse_page({"limit": "2", "sort_key": "name", "sort_dir": "desc", "marker": "m"}, CLUSTER_SORT_KEYS)
    assert page == Page(limit=2, sort_key="name", sort_dir="desc", marker="m")


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "-1"}, {"limit": "x"}, {"sort_dir": "up"},
                                   {"sort_key": "password"}])
def test_page_invalid_is_400(query: dict[str, str]) -> None:
    with pytest.raises(ApiError) as info:
        paging.parse_page(query, CLUSTER_SORT_KEYS)
    assert info.value.status == 400


def test_next_link_only_when_page_full() -> None:
    page = Page(limit=2)
    assert paging.next_link("http://h", "clusters", page, 1, "a") is None
    link = paging.next_link("http://h", "clusters", page, 2, "u2")
    assert link == "http://h/v1/clusters?sort_key=id&sort_dir=asc&limit=2&marker=u2"


# ----------------------------------------------------------------------------- error body


def test_error_body_shape() -> None:
    body = error_body(404, "Cluster x could not be found. Really.", "req-1")
    assert body == {"errors": [{"request_id": "req-1", "code": "client", "status": 404,
                                "title": "Cluster x could not be found", "detail": "Cluster x could not be found. Really.",
                                "links": []}]}
    assert error_body(500, "boom", "r")["errors"][0]["code"] == "server"
    assert title_of("no dot here") == "no dot here"


# ----------------------------------------------------------------------------- validation


def test_template_fields_defaults() -> None:
    out = validation.template_fields({"coe": "kubernetes", "image_id": "fedora-coreos",
                                      "labels": {"a": 1, "b": True, "c": "x"}})
    assert out["network_driver"] == "flannel"
    assert out["server_type"] == "vm"
    assert out["labels"] == {"a": "1", "b": "True", "c": "x"}
    assert out["name"].endswith("-template")


@pytest.mark.parametrize(
    "body",
    [
        {"image_id": "i"},  # coe missing
        {"coe": "dcos", "image_id": "i"},  # no driver (Magnum never had one in tree)
        {"coe": "kubernetes"},  # image missing
        {"coe": "kubernetes", "image_id": "i", "network_driver": "weave"},
        {"coe": "kubernetes", "image_id": "i", "apiserver_port": 80},
        {"coe": "kubernetes", "image_id": "i", "docker_volume_size": 0},
        {"coe": "kubernetes", "image_id": "i", "bogus": 1},
        {"coe": "kubernetes", "image_id": "i", "dns_nameserver": "not-an-ip"},
        {"coe": "kubernetes", "image_id": "i", "public": "maybe"},
        [],
    ],
)
def test_template_fields_rejects(body: object) -> None:
    with pytest.raises(ApiError) as info:
        validation.template_fields(body)
    assert info.value.status == 400


def test_cluster_fields() -> None:
    out = validation.cluster_fields({"cluster_template_id": "t", "name": "k8s-1", "node_count": "2",
                                     "discovery_url": None}, Microversion(1, 1))
    assert out["node_count"] == 2 and out["master_count"] == 1 and out["create_timeout"] == 60
    assert "discovery_url" not in out
    assert validation.cluster_fields({"cluster_template_id": "t"}, Microversion(1, 1))["name"].endswith("-cluster")
    assert validation.cluster_fields({"cluster_template_id": "t", "node_count": 0}, Microversion(1, 10))[
        "node_count"] == 0


@pytest.mark.parametrize(
    ("body", "version"),
    [
        ({}, (1, 1)),
        ({"cluster_template_id": "t", "name": "1bad"}, (1, 1)),
        ({"cluster_template_id": "t", "node_count": 0}, (1, 9)),
        ({"cluster_template_id": "t", "node_count": -1}, (1, 14)),
        ({"cluster_template_id": "t", "master_count": 2}, (1, 1)),
        ({"cluster_template_id": "t", "master_count": 0}, (1, 1)),
        ({"cluster_template_id": "t", "create_timeout": -5}, (1, 1)),
        ({"cluster_template_id": "t", "unknown": 1}, (1, 1)),
    ],
)
def test_cluster_fields_rejects(body: dict[str, object], version: tuple[int, int]) -> None:
    with pytest.raises(ApiError) as info:
        validation.cluster_fields(body, Microversion(*version))
    assert info.value.status == 400


def test_merged_labels() -> None:
    parent = {"a": "1", "b": "2"}
    assert clusterspec.merged_labels(parent, None, False) == parent
    assert clusterspec.merged_labels(parent, {"b": "3"}, False) == {"b": "3"}
    assert clusterspec.merged_labels(parent, {"b": "3", "c": "4"}, True) == {"a": "1", "b": "3", "c": "4"}


# ----------------------------------------------------------------------------- status machine


def test_status_happy_path_and_delete() -> None:
    s = status.transition(None, "ClusterCreateRequested")
    assert s == status.CREATE_IN_PROGRESS
    assert status.transition(s, "ClusterCreateRequested") == s  # a replayed request creates nothing new
    s = status.transition(s, "ClusterCreateCompleted")
    assert s == status.CREATE_COMPLETE
    s = status.transition(s, "ClusterDeleteRequested")
    assert s == status.DELETE_IN_PROGRESS
    assert status.transition(s, "ClusterDeleteFailed") == status.DELETE_FAILED
    assert status.transition(s, "ClusterDeleteCompleted") == status.GONE


def test_status_never_goes_backwards() -> None:
    assert status.transition(status.DELETE_IN_PROGRESS, "ClusterCreateCompleted") == status.DELETE_IN_PROGRESS
    assert status.transition(status.CREATE_FAILED, "ClusterCreateCompleted") == status.CREATE_FAILED
    assert status.transition(status.CREATE_IN_PROGRESS, "ClusterRejected") == status.CREATE_FAILED
    assert status.transition(status.CREATE_COMPLETE, "ClusterRejected") == status.CREATE_COMPLETE
    assert status.transition(None, "ClusterCreateCompleted") is None
    assert status.transition(status.CREATE_COMPLETE, "NodeCreated") == status.CREATE_COMPLETE
    # a refused create answered 403 goes away; a cluster that got further is never withdrawn
    assert status.transition(status.CREATE_FAILED, "ClusterWithdrawn") == status.GONE
    assert status.transition(status.CREATE_COMPLETE, "ClusterWithdrawn") == status.CREATE_COMPLETE
    assert status.transition(status.DELETE_IN_PROGRESS, "ClusterWithdrawn") == status.DELETE_IN_PROGRESS
