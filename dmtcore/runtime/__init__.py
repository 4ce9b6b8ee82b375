"""How a dmt command runs, beneath every concept: Ctrl-C as a request to stop, named crash
points for the crash tests, the stage notices of a long operation, and torchrun's processes."""
