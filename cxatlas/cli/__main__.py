"""``python -m cxatlas.cli``: the same as the ``cxatlas`` console script."""
import sys

from cxatlas.cli.main import main

sys.exit(main())
