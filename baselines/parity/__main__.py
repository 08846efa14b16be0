"""`python -m baselines.parity CASE_DIR [CASE_DIR ...]`."""

import sys

from baselines.parity import main

sys.exit(main())
