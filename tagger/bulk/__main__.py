import sys

from tagger.bulk.cli import main

sys.exit(main())
