"""One module per Magnum resource; each exposes ``routes`` (an ``aiohttp.web.RouteTableDef``)."""
