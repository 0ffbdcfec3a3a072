"""`python -m models`: list, fetch and convert the pinned real models (see `models.fetch`)."""

import sys

from models.fetch import main

if __name__ == "__main__":
    sys.exit(main())
