"""Pictures and explanations of backpropagation: ``sg.graph`` (the computation graph with
values and gradients, laid out by Graphviz) and ``sg.explain`` (reverse mode step by step)."""
