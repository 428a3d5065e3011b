"""``python -m tollway``, and the ``tollway`` command (its console script calls `run`)."""

from __future__ import annotations

import gc


def run() -> int:
    # A start builds objects that live as long as the process (modules, config, the app): the collector's passes
    # over them find next to nothing and took about a tenth of a start. Off until the server has frozen them
    # (tollway.api.app), or until any other command has parsed its arguments (tollway.cli.main).
    gc.disable()
    from tollway.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
