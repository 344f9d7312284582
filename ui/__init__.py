"""pagedesk's Qt widgets. They never import `app`: services and models come in through
their constructors and methods, and what a person does goes out through signals."""
