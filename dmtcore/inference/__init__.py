"""Prediction: reading inputs for `dmt predict` and computing every requested task in one pass,
and what a pixel-level prediction is as arrays and viewable files."""
