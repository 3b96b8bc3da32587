"""The command line: ``main`` builds the app from one module per command group; ``helpers`` is what they share."""


def main() -> None:
    """The console entry point (also reachable as ``alignkit.cli:main``, the entry point of earlier installs)."""
    from alignkit.cli.main import main as run

    run()
