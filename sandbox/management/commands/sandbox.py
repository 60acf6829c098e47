"""`python manage.py sandbox [--port 8765] [--users N] [--seed S] [--api-key K]`: same as `python -m sandbox`."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from sandbox import cli


class Command(BaseCommand):
    help = "Run the provider sandbox (Junction API simulator) on 127.0.0.1 in the foreground."
    requires_system_checks: list[str] = []  # needs no database or settings beyond INSTALLED_APPS

    def add_arguments(self, parser: ArgumentParser) -> None:
        cli.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        cli.run(options, out=self.stdout)
