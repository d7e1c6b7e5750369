"""``python -m kexport``."""

from kexport.cli import main

raise SystemExit(main())
