"""`python -m sandbox --port 8765 --users 20 --seed 42 [--api-key K]`: the sandbox without Django."""

from __future__ import annotations

from sandbox.cli import main

if __name__ == "__main__":
    main()
