import sys

from tagger.cli import main

sys.exit(main(prog="python -m tagger"))
