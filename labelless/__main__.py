import sys

from labelless.cli import main

sys.exit(main())
