"""dmt's built-in task plugins, installed as entry points of the `dmt` group like any other."""
