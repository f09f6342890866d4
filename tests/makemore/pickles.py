"""A payload for the checkpoint tests: a pickle that would run code when loaded by an unsafe unpickler."""

import os


class RunsCode:
    """Unpickling this runs `touch marker`, unless the unpickler refuses it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
