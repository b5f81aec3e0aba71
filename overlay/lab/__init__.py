"""overlay-lab: a multi-node cluster of network namespaces on one machine."""


def main() -> None:
    """The ``overlay-lab`` entry point.  Imported on call, so that ``python -m
    overlay.lab.responder`` (run in every lab pod) does not load the whole lab with click."""
    from overlay.lab.cli import main as cli_main
    cli_main()


__all__ = ["main"]
