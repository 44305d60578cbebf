"""A local Hugging Face Hub emulator: directories served as a *dataset* repo over HTTP, with fault knobs.

The package: ``repo`` (the model), ``faults`` (knobs and the request log), ``http`` (server plumbing),
``app`` (``HubEmulator`` and its routes), ``serve`` (the command).

The unmodified ``huggingface_hub`` client and the daemon's own Hub client talk to it exactly as to the real
Hub (see /work/shared/HUB_PROTOCOL.md, "Emulator"). Two listeners on ``host``: the HUB origin (what
``HF_ENDPOINT`` names: resolve, dataset info, tree, paths-info, refs) and a CDN origin on another port that
serves LFS objects through signed, expiring URLs. Tests, the demo, benchmarks and air-gapped mirrors use it.

Invariants:
- ``commit`` snapshots a directory tree as an immutable commit. Files are referenced in place, never copied,
  and hashed once (git blob sha1; sha256 for LFS files); they must not change afterwards. Every answer for a
  commit sha is therefore immutable; only branches move (``commit``, ``move_branch``).
- Bodies are streamed from disk (``sendfile``, or a chunked copy when a fault shapes the body) and a Range is
  honoured by seeking: a file is never read whole into memory.
- Every response carries ``Content-Length`` (HTTP/1.1 keep-alive), never ``Content-Encoding``, and never a
  Xet signal (``X-Xet-*`` headers, ``Link rel="xet-auth"``, ``xetHash``): the client would try a Xet server.
- Errors carry ``X-Error-Code`` as the real Hub does; the CDN answers 403 for a bad or expired signature.
- Faults fire only where they can do what they say (a body fault needs a file body, a range fault a 206),
  so a fault's ``count`` is never spent on a request it could not affect.
- One DEBUG log line per request and an INFO line per fired fault. Tokens and signed-URL query strings are
  never logged or recorded: records and log lines carry the URL path only.
- Bandwidth knob: ``cdn_bytes_per_s`` (default None: unlimited) paces every CDN response body as a real
  CDN limits one connection (the Hub's gives about 40-60 MB/s per connection). Each response has its own
  budget, starting empty after the headers, so the body byte at offset ``k`` leaves no earlier than
  ``(k + 1) / cdn_bytes_per_s`` seconds later: N bytes take at least N / rate. Concurrent responses (several
  connections) each get the full rate; there is no shared cap. The hub origin is never paced.
- ``html_directory_index`` (default off; benchmarks only, the real Hub has no such page): resolve URLs of
  directories ending in ``/`` answer an HTML index page linking the children, for rclone's http backend.
"""

from vfs.hub.emulator.app import HubEmulator
from vfs.hub.emulator.faults import FAULT_KINDS, Fault, RequestRecord
from vfs.hub.emulator.serve import serve_forever

__all__ = ["FAULT_KINDS", "Fault", "HubEmulator", "RequestRecord", "serve_forever"]
