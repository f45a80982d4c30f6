"""`python -m jaxgpt ...` is the `jaxgpt` command, for environments where its script is not on PATH."""

import sys

from jaxgpt.cli import main

sys.exit(main())
