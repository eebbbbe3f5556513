"""``python -m benchmark.cli``: the same as the ``sslbench`` console script."""

import sys

from benchmark.cli.main import main

sys.exit(main())
