"""The one error tree of Tollway.

Every error a client can see is a `TollwayError` leaf that fixes the HTTP status and the Anthropic
``error.type``; `tollway.api.errors` is the single place that renders them::

    TollwayError
      InvalidRequest          400 invalid_request_error
      AuthenticationFailed    401 authentication_error
      BillingError            402 billing_error
      PermissionDenied        403 permission_error
      NotFound                404 not_found_error
      RequestTooLarge         413 request_too_large
      RateLimited             429 rate_limit_error
      InternalError           500 api_error
      UpstreamError                                  (the upstream could not give an answer)
        UpstreamUnavailable   502 api_error
        UpstreamTimeout       504 timeout_error
      Overloaded              529 overloaded_error

`ConfigError` is not an HTTP error: it stops the process at startup or fails a CLI command.
"""

from __future__ import annotations

from typing import ClassVar


class TollwayError(Exception):
    """An error with an Anthropic-shaped rendering."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 key_fault: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.key_fault = key_fault
        """Raised for an upstream's answer about the gateway's own key (refused, out of quota): that key
        should rest, not the whole upstream."""


class InvalidRequest(TollwayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(TollwayError):
    status = 401
    error_type = "authentication_error"


class BillingError(TollwayError):
    status = 402
    error_type = "billing_error"


class PermissionDenied(TollwayError):
    status = 403
    error_type = "permission_error"


class NotFound(TollwayError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(TollwayError):
    # Anthropic answers a wrong method with a 405 carrying invalid_request_error.
    status = 405
    error_type = "invalid_request_error"


class RequestTooLarge(TollwayError):
    status = 413
    error_type = "request_too_large"


class RateLimited(TollwayError):
    status = 429
    error_type = "rate_limit_error"


class InternalError(TollwayError):
    status = 500
    error_type = "api_error"


class UpstreamError(TollwayError):
    """The upstream gave no usable answer; the message names the upstream, never its key."""


class UpstreamUnavailable(UpstreamError):
    status = 502
    error_type = "api_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout_error"


class Overloaded(TollwayError):
    status = 529
    error_type = "overloaded_error"


class ConfigError(Exception):
    """A configuration problem, reported with the file, the key and what is wrong."""
