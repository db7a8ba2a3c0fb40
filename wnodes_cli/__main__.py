import sys

from wnodes_cli.cli import main

sys.exit(main())
