"""`python -m dmt` is the `dmt` command (as is `python -m dmtcore`)."""

from dmtcore.cli import main

main()
