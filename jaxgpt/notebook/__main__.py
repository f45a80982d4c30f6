import sys

from jaxgpt.notebook.build import main

sys.exit(main())
