"""The providers this deployment syncs. Adding one: its package under connections/providers/, its sandbox fake,
and one line here (docs/ARCHITECTURE.md, "Adding a provider")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured

from connections.providers.contract import SyncProvider
from connections.providers.dexcom.provider import DexcomProvider
from connections.providers.junction.provider import JunctionProvider
from connections.providers.libre.provider import LibreProvider
from connections.providers.whoop.provider import WhoopProvider

PROVIDERS: dict[str, type[SyncProvider]] = {
    p.key: p for p in (JunctionProvider, WhoopProvider, DexcomProvider, LibreProvider)
}


def register_provider(provider: type[SyncProvider]) -> type[SyncProvider]:
    """Add a provider at run time (tests, plug-ins); the registry line above is the normal way."""
    PROVIDERS[provider.key] = provider
    return provider


def unregister_provider(key: str) -> None:
    PROVIDERS.pop(key, None)


def provider_class(key: str) -> type[SyncProvider]:
    try:
        return PROVIDERS[key]
    except KeyError:
        raise LookupError(f"no provider {key!r} is registered") from None


def provider_choices() -> list[tuple[str, str]]:
    """Connection.provider's choices: a callable, so a new provider needs no migration."""
    return [(p.key, p.label) for p in PROVIDERS.values()]


@dataclass(frozen=True)
class ProviderJob:
    """A scheduled sync job and the providers it syncs."""

    name: str
    cron: str
    description: str
    providers: tuple[type[SyncProvider], ...]


def provider_jobs() -> dict[str, ProviderJob]:
    """Every provider's job; providers sharing a job must share its cron."""
    jobs: dict[str, ProviderJob] = {}
    for provider in PROVIDERS.values():
        job = jobs.get(provider.job)
        if job is None:
            jobs[provider.job] = ProviderJob(
                provider.job, provider.cron, provider.job_description, (provider,)
            )
            continue
        if job.cron != provider.cron:
            raise ImproperlyConfigured(
                f"providers of job {provider.job!r} disagree on its cron: "
                f"{job.providers[0].key} {job.cron!r}, {provider.key} {provider.cron!r}"
            )
        jobs[provider.job] = ProviderJob(job.name, job.cron, job.description, (*job.providers, provider))
    return jobs


@contextmanager
def open_provider(key: str, config: Any = None, *, concurrency: int = 1) -> Iterator[SyncProvider]:
    """An instance of provider `key` for one sync or one job run, closed after."""
    with provider_class(key)(config, concurrency=concurrency) as provider:
        yield provider


@register()
def providers_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """Start-up: the registered providers agree on their jobs' crons, and each one's configuration loads."""
    messages: list[CheckMessage] = []
    try:
        provider_jobs()
    except ImproperlyConfigured as exc:
        messages.append(Error(str(exc), id="connections.E201"))
    for provider in PROVIDERS.values():
        if getattr(settings, provider.settings_name, None) is None:
            try:
                provider.config_from_env()
            except ImproperlyConfigured as exc:
                messages.append(Error(f"provider {provider.key}: {exc}", id="connections.E202"))
    return messages
