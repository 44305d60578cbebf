"""The emulator's fault knobs and its request log: what a test asks the emulator to get wrong, and what
it saw. The firing rules are in the package docstring (``vfs.hub.emulator``)."""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = frozenset(
    {
        "status",
        "rate_limit",
        "delay",
        "stall",
        "trickle",
        "truncate",
        "reset",
        "ignore_range",
        "wrong_range",
        "flip_byte",
        "expire_url",
    }
)
_ORIGINS = frozenset({"hub", "cdn", "any"})


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it, appended when its response is finished."""

    origin: str  # "hub" | "cdn"
    method: str
    path: str  # URL path as sent (percent-encoded), never the query string
    file: str | None  # the repo file path the request was about (resolve or CDN), if any
    range: str | None
    auth: bool  # an Authorization header was present
    status: int  # 0 if no response was sent (connection reset before the headers)
    bytes_sent: int  # body bytes written to the socket
    fault: str | None  # the fault kinds that fired on this request, comma-separated


@dataclass
class Fault:
    """A deliberate misbehaviour, matched per request by origin, method and repo file path.

    Kinds (``after_bytes`` counts body bytes; body faults keep the body incomplete, at most size-1 bytes):
      status        answer ``status`` (5xx/4xx) with a JSON error body
      rate_limit    429 with ``RateLimit: "resolvers";r=0;t=<s>`` and ``Retry-After: <s>``: whole seconds as
                    on the real Hub when ``retry_after_s`` is integral, else the fraction (``t=0.25``; fast
                    tests; huggingface_hub's own parser then reads the integer part)
      delay         sleep ``delay_s`` before the headers, then answer normally
      stall         send ``after_bytes`` of the body, sleep ``delay_s``, close the connection
      trickle       send the whole body in pieces of ``after_bytes`` (4 KiB if 0) with ``delay_s`` (10 ms if
                    0) between pieces
      truncate      declare the full ``Content-Length``, send ``after_bytes``, close
      reset         TCP RST: before the headers if ``after_bytes`` is 0, else after that many body bytes
      ignore_range  answer a Range request with 200 and the full body
      wrong_range   answer a Range request with 206 for a shifted range (the body matches the header, not
                    the request); a whole-file range gets a wrong total instead
      flip_byte     flip one byte at body offset ``after_bytes`` (the last byte if the body is shorter)
      expire_url    the CDN answers 403 as for an expired signature
    ``file_glob`` is an ``fnmatch`` pattern (``*`` crosses ``/``) against the repo file path; a request that
    names no file (tree, info, paths-info) matches only ``"*"``. ``count=None`` fires without limit.
    ``probability`` draws from the emulator's seeded RNG, so a random fault mix replays exactly.
    """

    kind: str
    origin: str = "any"
    method: str | None = None
    file_glob: str = "*"
    count: int | None = 1
    probability: float = 1.0
    status: int = 503
    retry_after_s: float = 1.0
    delay_s: float = 0.0
    after_bytes: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.origin not in _ORIGINS:
            raise ValueError(f"unknown fault origin {self.origin!r}; expected hub, cdn or any")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability {self.probability} is not within [0, 1]")
        if self.count is not None and self.count < 0:
            raise ValueError(f"fault count {self.count} is negative")
        if self.after_bytes < 0 or self.delay_s < 0 or self.retry_after_s < 0:
            raise ValueError("fault after_bytes, delay_s and retry_after_s must not be negative")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"status fault needs a 4xx or 5xx status, not {self.status}")

    @property
    def category(self) -> str:
        """At most one fault per category fires on a request: a delay can combine with a body fault."""
        if self.kind == "delay":
            return "delay"
        if self.kind in ("status", "rate_limit", "expire_url") or (
            self.kind == "reset" and not self.after_bytes
        ):
            return "answer"
        return "body"
