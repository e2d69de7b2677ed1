"""Optional API-key auth: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers


def is_authorized(headers: Headers, api_key: str | None) -> bool:
    if api_key is None:
        return True
    # Exactly "Bearer <key>" (the scheme in any case): no stripping, so "Bearer  <key>" is refused.
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.encode("utf-8"), api_key.encode("utf-8"))
