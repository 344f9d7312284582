"""`pagedesk` / `python -m app`: the desktop app; `pagedesk demo` / `serve` / `download` /
`models` / `rm`: headless."""

from __future__ import annotations

import argparse
import logging

# Hub downloads and the local model list (light to import; app.hub imports no Qt).
from app.model_cli import COMMANDS as MODEL_COMMANDS
from app.model_cli import add_model_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedesk", description=__doc__)
    # No subcommand: the desktop app.
    parser.add_argument("--model", dest="gui_model", metavar="MODEL", default=None,
                        help="the window's model (default: the one in the settings)")
    parser.add_argument("--data-dir", default=None,
                        help="sessions, settings and logs (default: $PAGEDESK_DATA_DIR or the "
                        "app data dir)")
    parser.add_argument("--install-desktop", action="store_true",
                        help="install a .desktop entry and icon under ~/.local/share, then exit")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="stream a chat reply in the terminal and show the KV cache")
    demo.add_argument("--model", default=None, help="model dir, cached Hub repo id or .gguf file")
    demo.add_argument("--question", default=None)
    demo.add_argument("--max-tokens", type=int, default=160)
    # The server lives with the engine and imports no Qt: `pagedesk serve` runs headless.
    from engine.server.cli import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="serve the OpenAI-compatible API (like vllm serve)"))
    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        from engine.server.cli import run_serve

        logging.getLogger().setLevel(args.log_level.upper())
        run_serve(args)
        return
    if args.command in MODEL_COMMANDS:
        from app.model_cli import run_model_command

        raise SystemExit(run_model_command(args))
    if args.install_desktop:
        from app.desktop_entry import install_desktop_entry

        print(f"installed {install_desktop_entry()}")
        return
    if args.command is None:
        from app.gui import run_gui

        raise SystemExit(run_gui(model=args.gui_model, data_dir=args.data_dir))
    from app.demo import DEFAULT_QUESTION, run_demo

    if args.command == "demo":
        run_demo(
            getattr(args, "question", None) or DEFAULT_QUESTION,
            model=getattr(args, "model", None),
            max_tokens=getattr(args, "max_tokens", 160),
        )


if __name__ == "__main__":
    main()
