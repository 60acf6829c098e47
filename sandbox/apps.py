from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    """Registers the sandbox so its management command (`manage.py sandbox`) is discovered. No models."""

    name = "sandbox"
    verbose_name = "Provider sandbox"
