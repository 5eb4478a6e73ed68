"""``python -m transfer_scaling.train --spec SPEC --out RUN_DIR``: one run, as each launcher rank starts it."""

import sys

from .run import main

sys.exit(main())
