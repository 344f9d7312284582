"""pagedesk's application layer: the entry point and the wiring of engine and window."""
