"""``python -m gateways.http``: serve the API with uvicorn.

``PARLEY_API_HOST``, ``PARLEY_API_PORT``, and ``PARLEY_API_WORKERS`` (processes; default 1). Every
worker is a full API process: it shares nothing with the others but the services, which is all
the store needs for correctness (optimistic concurrency, idempotent commands).
"""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "gateways.http.app:app_from_env",
        factory=True,
        host=os.environ.get("PARLEY_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("PARLEY_API_PORT", "8000")),
        log_level="warning",
        access_log=False,  # the API logs every request itself, with its request id
        # Client addresses are not used, so X-Forwarded-* need not be parsed; behind a proxy, set
        # PARLEY_PROXY_HEADERS=1 for logs of uvicorn's own that name the client.
        proxy_headers=os.environ.get("PARLEY_PROXY_HEADERS", "") not in ("", "0"),
        lifespan="on",
        workers=int(os.environ.get("PARLEY_API_WORKERS", "1")),
    )


if __name__ == "__main__":
    main()
