"""``python -m odespec``."""

from odespec.cli import main

main()
