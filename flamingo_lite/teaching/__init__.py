"""For people: the checker that compares a learner's module with the reference, the environment doctor, plots
(`teaching.viz`) and widgets. These import matplotlib and ipywidgets; the layers never import them.
"""
