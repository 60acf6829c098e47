"""Typed readers for settings that come from the environment.

Each helper fails loudly with ImproperlyConfigured naming the variable, so a bad deploy stops at start-up
instead of syncing with a silently wrong value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    """A string setting; `NAME_FILE` (a Docker/Render secret file) wins over `NAME`."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE points at {file_path!r}, which cannot be read: {exc}"
            ) from exc
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use true or false")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return parse_int(name, raw, minimum=minimum, maximum=maximum)


def parse_int(name: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum of {maximum}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}")
    return value


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated list; blanks are dropped and order is kept without duplicates."""
    raw = os.environ.get(name, default)
    return split_list(raw)


def split_list(raw: str) -> list[str]:
    seen: dict[str, None] = {}
    for item in raw.split(","):
        item = item.strip()
        if item:
            seen.setdefault(item, None)
    return list(seen)


def env_origins(name: str, default: str = "") -> list[str]:
    """A comma-separated list of web origins (`https://app.example.com`, `http://localhost:3000`).

    An origin is a scheme, a host and an optional port, nothing else: a browser sends exactly that in `Origin`,
    so a trailing slash, a path or a wildcard would silently never match.
    """
    origins = env_list(name, default)
    for origin in origins:
        if not is_origin(origin):
            raise ImproperlyConfigured(
                f"{name} has {origin!r}, which is not an origin: use scheme://host[:port] with http or https "
                "and nothing after the host, e.g. https://app.example.com"
            )
    return origins


def is_origin(value: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number or out of range)
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme in ("http", "https")
        and bool(host)
        and "*" not in host
        and not parts.username
        and not parts.password
        and parts.path == ""
        and not parts.query
        and not parts.fragment
        and value == f"{parts.scheme}://{parts.netloc}"
    )


def provider_budgets_from_env(raw: str) -> dict[str, list[dict[str, float | int | str]]]:
    """PROVIDER_BUDGETS: a JSON object of provider → [{"limit", "window", "scope"}], checked here so a bad value
    stops start-up naming the variable."""
    if not raw:
        return {}
    import json

    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ImproperlyConfigured("PROVIDER_BUDGETS must be a JSON object") from None
    if not isinstance(parsed, dict):
        raise ImproperlyConfigured("PROVIDER_BUDGETS must be a JSON object of provider: [limits]")
    for provider, limits in parsed.items():
        if not isinstance(limits, list) or not all(
            isinstance(item, dict)
            and isinstance(item.get("limit"), int)
            and item["limit"] >= 1
            and isinstance(item.get("window"), int | float)
            and item["window"] > 0
            and item.get("scope", "app") in ("app", "account")
            for item in limits
        ):
            raise ImproperlyConfigured(
                f'PROVIDER_BUDGETS["{provider}"] must be a list of {{"limit": int >= 1, "window": seconds > 0, '
                '"scope": "app" | "account"}}'
            )
    return parsed
