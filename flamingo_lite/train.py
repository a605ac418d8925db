"""`python -m flamingo_lite.train`: the tiny Flamingo's command line (its code is `flamingo_lite.tiny.train`)."""
import sys

from .tiny.train import main

if __name__ == "__main__":
    sys.exit(main())
