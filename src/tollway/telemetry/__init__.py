"""What the gateway tells its operator about the requests it served: totals for ``/metrics`` and one log line
per request. Fed once per request, as its usage row is made; nothing here does I/O on the request path."""

from tollway.telemetry.access_log import AccessLog, open_sink, request_line
from tollway.telemetry.capture import Capture
from tollway.telemetry.stats import RequestStats

__all__ = ["AccessLog", "Capture", "RequestStats", "open_sink", "request_line"]
