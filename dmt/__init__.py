"""Only the `python -m dmt` alias of the `dmt` command; the library is `dmtcore`.

Not the unrelated `dmt` project on PyPI: this package holds nothing but `__main__`, so that
`python -m dmt ...` does what the console script `dmt ...` does.
"""
