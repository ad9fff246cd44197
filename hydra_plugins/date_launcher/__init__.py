"""DATE's Hydra launchers (``hydra/launcher=slurm`` / ``local``). Hydra loads launcher classes only
from the ``hydra_plugins`` namespace package, hence this location; the code is in launcher.py."""
