import sys

from tagger.bulk.cli import main

sys.exit(main(prog="python -m tagger.bulk"))
