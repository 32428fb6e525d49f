"""`python -m micalib.export`: the command line of micalib/export/cli.py."""
import sys

from micalib.export.cli import main
from utils.errors import run_main
from utils.log_setup import setup_logging

setup_logging()
run_main(lambda: main(sys.argv[1:]))
