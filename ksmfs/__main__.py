import sys

from ksmfs.cli import main

if __name__ == "__main__":
    sys.exit(main())
