import sys

from varrl.cli import main

sys.exit(main())
