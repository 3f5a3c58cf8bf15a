import sys

from redistill.cli.main import main

sys.exit(main())
