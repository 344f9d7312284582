"""`python -m engine.server`: the same as `pagedesk serve`."""

from engine.server.cli import main

main()
