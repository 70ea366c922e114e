"""Every error ovms-graph reports, and the one table that maps request errors to HTTP.

Operator errors (config, graph, CLI) are :class:`ConfigError` values carrying every
:class:`Problem` found, one per line, compiler style. Request errors are exceptions that carry
their HTTP status; handlers raise them and the front end renders them through :data:`ERROR_TABLE`
into OpenAI-shaped bodies. Nothing here ever puts a traceback into a message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One operator-facing problem: where it is and what is wrong."""

    message: str
    file: str | None = None
    line: int | None = None
    node: str | None = None
    calculator: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        if self.node is not None:
            where += f'node "{self.node}"' + (f" ({self.calculator})" if self.calculator else "") + ": "
        if self.field:
            where += f"{self.field}: "
        return where + self.message


class OvmsGraphError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(OvmsGraphError):
    """A configuration, graph or command line that cannot be used; lists every problem."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class CommandError(ConfigError):
    """A command that cannot go on: the CLI prints ``ovms-graph <command>: error: <message>`` and exits
    with ``exit_code`` (2: a flag that cannot be used; 1: a failure such as a download)."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(Problem(message))
        self.message = message


class RegistryError(ConfigError):
    """A calculator registry conflict or a plugin that cannot be imported."""


class RequestError(OvmsGraphError):
    """A request that cannot be served; the subclass decides the HTTP status (see ERROR_TABLE)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BadRequest(RequestError):
    """400: the request is malformed or asks for something the model cannot do."""


class Unauthorized(RequestError):
    """401: missing or wrong API key."""


class NotFound(RequestError):
    """404: unknown model or route."""


class PayloadTooLarge(RequestError):
    """413: the body exceeds --max_request_size."""


class ServiceUnavailable(RequestError):
    """503: not ready, shutting down, or the queue is full; carries Retry-After seconds."""

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class GenerationError(RequestError):
    """500: the model failed while serving a valid request."""


class RequestCancelled(RequestError):
    """The client went away; nobody reads the response (499 in logs, never sent)."""


@dataclass(frozen=True)
class ErrorKind:
    """HTTP rendering of one RequestError class."""

    status: int
    type: str


# Most specific first: lookups walk the exception's MRO.
ERROR_TABLE: dict[type[RequestError], ErrorKind] = {
    BadRequest: ErrorKind(400, "invalid_request_error"),
    Unauthorized: ErrorKind(401, "authentication_error"),
    NotFound: ErrorKind(404, "not_found_error"),
    PayloadTooLarge: ErrorKind(413, "invalid_request_error"),
    RequestCancelled: ErrorKind(499, "cancelled"),
    ServiceUnavailable: ErrorKind(503, "service_unavailable"),
    GenerationError: ErrorKind(500, "server_error"),
}


def error_kind(error: RequestError) -> ErrorKind:
    """The HTTP status and OpenAI error type for ``error``."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ErrorKind(500, "server_error")


def error_body(error: RequestError) -> dict[str, object]:
    """The OpenAI-shaped JSON body for ``error``."""
    kind = error_kind(error)
    return {
        "error": {
            "message": error.message,
            "type": kind.type,
            "param": error.param,
            "code": error.code,
        }
    }
