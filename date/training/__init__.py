"""Training: the loop that runs steps (trainer.py) and the hooks that act between them (hooks/).

Around the loop: the typed training state that last.pth holds (state.py), the optimiser and lr schedule
(optim.py), and the non-finite checks with their one-paragraph report (non_finite.py). Every module of the
package logs as ``date.trainer``, the name the training's log lines have always had.
"""
