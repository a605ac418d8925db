"""The tiny Flamingo: a vision encoder, a small language model, the assembled model, its data and its training.

Built on the layers one level up (`flamingo_lite.perceiver`, `flamingo_lite.gated`, ...), never the other way round.
`python -m flamingo_lite.train` is its command line.
"""
