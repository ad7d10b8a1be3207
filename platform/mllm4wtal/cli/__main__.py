"""``python -m mllm4wtal.cli``."""

import sys

from mllm4wtal.cli import main

sys.exit(main())
