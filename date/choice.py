"""``Choice``: the base of the schema's enums (closed sets of strings such as ``assigner.mode``)."""
from enum import Enum


class Choice(str, Enum):
    """An enum member that compares, prints and formats as its value ("dual", not "Mode.dual"), so code
    and old checkpoints holding plain strings work alike."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
