"""Magnum's list paging: ``limit``, ``marker``, ``sort_key``, ``sort_dir`` and the ``next`` link."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from services.api.errors import bad_request
from services.api.store import Page

MAX_LIMIT = 1000


def parse_page(query: Mapping[str, str], sort_keys: Mapping[str, str], *, max_limit: int = MAX_LIMIT) -> Page:
    raw_limit = query.get("limit")
    if raw_limit is None or raw_limit == "":
        limit = max_limit
    else:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise bad_request(f"Invalid input for field/attribute limit. Value: '{raw_limit}'.") from None
        if limit <= 0:
            raise bad_request("Limit must be positive")
        limit = min(limit, max_limit)
    sort_dir = query.get("sort_dir") or "asc"
    if sort_dir not in ("asc", "desc"):
        raise bad_request(f"Invalid sort direction: {sort_dir}. Acceptable values are 'asc' or 'desc'")
    sort_key = query.get("sort_key") or "id"
    if sort_key not in sort_keys:
        raise bad_request(f"The sort_key value {sort_key} is an invalid field for sorting")
    marker = query.get("marker") or None
    return Page(limit=limit, sort_key=sort_key, sort_dir=sort_dir, marker=marker)


def next_link(base_url: str, resource: str, page: Page, count: int, last_uuid: str | None) -> str | None:
    """``<base>/v1/<resource>?sort_key=..&sort_dir=..&limit=N&marker=<uuid>`` when the page is full."""
    if count < page.limit or last_uuid is None:
        return None
    query = urlencode(
        {"sort_key": page.sort_key, "sort_dir": page.sort_dir, "limit": page.limit, "marker": last_uuid}
    )
    return f"{base_url}/v1/{resource}?{query}"
