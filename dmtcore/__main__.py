"""`python -m dmtcore` is the `dmt` command (handy under torchrun)."""

from dmtcore.cli import main

main()
