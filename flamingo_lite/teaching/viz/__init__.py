"""Plots for the lessons (matplotlib). Import the submodule you need, e.g. `from flamingo_lite.teaching.viz import masks`."""
