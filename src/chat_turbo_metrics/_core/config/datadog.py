"""Datadog exporter settings: Datadog's own ``DD_*`` variables, read as its libraries read them, and our two.

The endpoint variable is ours rather than Datadog's ``DD_URL``/``DD_DD_URL``: those tell a Datadog Agent where to
send its own data, so an application process that inherits them from an Agent's environment would silently
redirect its metrics; a name of our own cannot be set by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat_turbo_metrics._core.config.declaration import Settings, setting
from chat_turbo_metrics._core.config.values import parse_bool, parse_endpoint, parse_secret, parse_str
from chat_turbo_metrics._core.secret import Secret


def _parse_optional_str(raw: Any) -> str | None:
    text = parse_str(raw).strip()
    return text or None


def _parse_site(raw: Any) -> str:
    site = parse_str(raw).strip().lower()
    if not site or "/" in site or ":" in site or any(char.isspace() for char in site):
        raise ValueError("expected a Datadog site such as datadoghq.com or datadoghq.eu (a domain, no scheme or path)")
    return site


def _parse_tags(raw: Any) -> tuple[str, ...]:
    # DD_TAGS separates tags with spaces or commas, as Datadog's own libraries accept it.
    items = raw.replace(",", " ").split() if isinstance(raw, str) else [str(item) for item in raw]
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True, kw_only=True)
class DatadogSettings(Settings):
    """What the Datadog exporter sends with, and where; None means "from the resource" or "not set".

    Example:
        >>> DatadogSettings(datadog_api_key="0" * 32).datadog_api_key
        Secret('***')
    """

    SECTION = "datadog"
    TITLE = "the Datadog exporter"

    datadog_api_key: Secret | None = setting(
        None,
        parse=parse_secret,
        variable="DD_API_KEY",
        secret="whole",
        shown_default="not set",
        meaning="the API key; required with `OTEL_METRICS_EXPORTER=datadog`, else a `ConfigurationError` naming it "
        "(prefer the environment to a command-line flag, which other users of the machine can see)",
    )
    datadog_site: str = setting(
        "datadoghq.com",
        parse=_parse_site,
        variable="DD_SITE",
        meaning="`datadoghq.com`, `us3.datadoghq.com`, `us5.datadoghq.com`, `datadoghq.eu`, `ap1.datadoghq.com`, "
        "`ap2.datadoghq.com`, `ddog-gov.com`",
    )
    datadog_endpoint: Secret | None = setting(
        None,
        parse=parse_endpoint,
        variable="CHAT_TURBO_DATADOG_ENDPOINT",
        secret="userinfo",
        shown_default="`https://api.<site>`",
        meaning="base URL replacing `https://api.<site>` (a proxy, a test intake); `http://` only to loopback. User "
        "info (`https://user:password@proxy`, percent-encoded) is sent as `Authorization: Basic`",
    )
    datadog_env: str | None = setting(
        None,
        parse=_parse_optional_str,
        variable="DD_ENV",
        shown_default="the resource's `deployment.environment.name`",
        meaning="the `env` tag",
    )
    datadog_service: str | None = setting(
        None,
        parse=_parse_optional_str,
        variable="DD_SERVICE",
        shown_default="the resource's `service.name`",
        meaning="the `service` tag",
    )
    datadog_version: str | None = setting(
        None,
        parse=_parse_optional_str,
        variable="DD_VERSION",
        shown_default="the resource's `service.version`",
        meaning="the `version` tag",
    )
    datadog_tags: tuple[str, ...] = setting(
        (),
        parse=_parse_tags,
        variable="DD_TAGS",
        shown_default="none",
        meaning="extra tags on every series, space or comma separated (`team:chat region:eu`)",
    )
    datadog_host: str | None = setting(
        None,
        parse=_parse_optional_str,
        variable="DD_HOSTNAME",
        shown_default="the resource's `host.name`, else none",
        meaning="the host sent as each series' `resources` entry",
    )
    datadog_histogram_buckets: bool = setting(
        False,
        parse=parse_bool,
        variable="CHAT_TURBO_DATADOG_HISTOGRAM_BUCKETS",
        meaning="`true`: per-bucket counts too (`<name>.bucket` tagged `lower_bound`/`upper_bound`; each bucket is a "
        "custom metric series)",
    )
