"""``python -m aigc_book``: see :mod:`aigc_book.cli`."""

from aigc_book.cli import main

raise SystemExit(main())
