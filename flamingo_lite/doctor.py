"""`python -m flamingo_lite.doctor`: the environment check (its code is `flamingo_lite.teaching.doctor`)."""
import sys

from .teaching.doctor import main

if __name__ == "__main__":
    sys.exit(main())
