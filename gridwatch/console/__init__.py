"""The operator console: the warning desk for city, county and town desks.

An ASGI app (FastAPI on uvicorn/uvloop) with server-rendered pages, a little plain JavaScript,
server-sent events for live updates and a JSON API (OpenAPI at ``/api/openapi.json``). Cases,
users and scope live in :mod:`gridwatch.streams.cases`; this package holds no SQL.

* :mod:`.server` - :class:`Console`: the app, its live-update feed and how it is served
  (beside ``gridwatch run`` or on its own with ``gridwatch console -c FILE``);
* :mod:`.app` - routes (pages, API, events); :mod:`.live` - the bounded SSE fan-out;
* :mod:`.charts` - inline SVG (readings, grid map, funnel); :mod:`.cli` - ``gridwatch console``.
"""
