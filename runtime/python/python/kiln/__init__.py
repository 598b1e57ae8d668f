"""kiln from Python: compile transformer specs and run models.

>>> import kiln
>>> model = kiln.open("models/tiny/gpt2.toml")          # a spec (random weights), HF folder or .gguf
>>> model.forward([1, 2, 3]).shape                        # logits [tokens, vocab], a numpy array
(3, 256)

``kiln.compile(toml_or_path)`` gives the texts ``kiln check`` / ``kiln compile --emit ir|kernels``
print; ``Model.generate`` streams text pieces, ``Model.embed`` returns sentence embeddings.
kiln releases the GIL while it computes. Failures raise ``KilnError`` (``SpecError`` for an
invalid spec, whose message starts ``FILE:LINE:COL: error:``).
"""

from ._kiln import (
    Compiled,
    Generation,
    KilnError,
    Model,
    SpecError,
    __version__,
    backends,
    compile,
    open,
)

__all__ = [
    "Compiled",
    "Generation",
    "KilnError",
    "Model",
    "SpecError",
    "__version__",
    "backends",
    "compile",
    "open",
]
