"""``python -m streaming_module``: the ``streaming-module`` command."""

from streaming_module.cli import main

raise SystemExit(main())
