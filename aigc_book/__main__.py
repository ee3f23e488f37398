"""``python -m aigc_book``: see :mod:`aigc_book.cli`."""

import sys

try:
    from aigc_book.cli import main
except KeyboardInterrupt:  # Ctrl-C while PyTorch is still being imported
    print("aigc-book: interrupted before anything started; nothing was saved", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
