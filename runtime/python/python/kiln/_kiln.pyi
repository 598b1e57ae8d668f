"""Type stubs of kiln's native module (runtime/python/src/*.rs)."""

import os
from types import TracebackType
from typing import Dict, Iterator, List, Optional, Sequence, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "Compiled",
    "Generation",
    "KilnError",
    "Model",
    "SpecError",
    "backends",
    "compile",
    "open",
]
__version__: str

_Path = Union[str, "os.PathLike[str]"]
_Ids = Union[Sequence[int], "npt.NDArray[np.integer]"]
_Stop = Union[str, int, Sequence[Union[str, int]]]

class KilnError(Exception):
    """A kiln operation failed; the message is what the `kiln` command prints for it."""

class SpecError(KilnError):
    """The spec is invalid: the message is ``FILE:LINE:COL: error: ...`` plus a ``help:`` line."""

    file: str
    line: Optional[int]
    column: Optional[int]
    detail: str
    help: Optional[str]

def compile(
    source: Union[str, "os.PathLike[str]"],
    opt_level: int = 1,
    disable_passes: Optional[Sequence[str]] = None,
) -> Compiled:
    """Compile spec TOML text, or a spec file / HF folder / .gguf file (only the spec is read).

    A str is a path when a file or folder of that name exists, or when it is one line without
    ``=``; anything else is TOML text (named ``<string>`` in errors).
    """

def open(
    source: _Path,
    backend: str = "jit",
    precision: str = "stored",
    seed: int = 0,
    weights: Optional[_Path] = None,
    memory_limit: Union[int, str, None] = None,
    strict: bool = False,
    opt_level: int = 1,
    disable_passes: Optional[Sequence[str]] = None,
) -> Model:
    """Open a spec file (seeded random weights, or ``weights``), a HF folder or a .gguf file.

    ``backend``: ``jit``, ``reference``, ``kernel-ir`` or ``wgpu``; ``precision``: ``stored``,
    ``f32``, ``int8``, ``bf16`` or ``f16``; ``memory_limit``: bytes, or ``"8G"``-style sizes.
    """

def backends() -> List[str]:
    """The backend names ``open`` takes."""

@final
class Compiled:
    """A spec compiled down to kernels, with the stable text form of each stage."""

    @property
    def name(self) -> str: ...
    @property
    def graphs(self) -> List[str]:
        """The IR graphs' names (``NAME.encoder``, ``NAME.decoder``)."""
    def spec_text(self) -> str:
        """The resolved spec as TOML (the first part of ``kiln check``'s output)."""
    def ir_text(self) -> str:
        """``kiln compile SPEC --emit ir``."""
    def kernels_text(self) -> str:
        """``kiln compile SPEC --emit kernels``."""
    def dot_text(self) -> str:
        """``kiln compile SPEC --emit dot``."""
    def cost(self, seq_len: Optional[int] = None, batch: int = 1) -> Dict[str, object]:
        """The cost table of ``kiln check --format json``."""

@final
class Model:
    """A compiled model with its weights (and tokenizer), shared by any number of threads."""

    @property
    def name(self) -> str: ...
    @property
    def architecture(self) -> str:
        """``"decoder"``, ``"encoder"`` or ``"encoder-decoder"``."""
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_positions(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def embedding_dim(self) -> Optional[int]:
        """Width of ``embed``'s vectors; None without a sentence-embedding head."""
    @property
    def backend(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def weights_origin(self) -> str: ...
    @property
    def has_tokenizer(self) -> bool: ...
    @property
    def eos_token_ids(self) -> List[int]: ...
    @property
    def bos_token_id(self) -> Optional[int]: ...
    @property
    def warnings(self) -> List[str]: ...
    def forward(
        self, ids: _Ids, decoder_ids: Optional[_Ids] = None
    ) -> "npt.NDArray[np.float32]":
        """One forward pass: logits ``[tokens, vocab]`` (or the head's output without the batch axis)."""
    def outputs(
        self, ids: _Ids, decoder_ids: Optional[_Ids] = None
    ) -> Dict[str, "npt.NDArray[np.generic]"]:
        """Every output of one forward pass, with kiln's shapes (batch axis first)."""
    def generate(
        self,
        prompt: Union[str, _Ids],
        max_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[_Stop] = None,
        decoder_ids: Optional[_Ids] = None,
    ) -> Generation:
        """Stream generated text pieces (needs a tokenizer); greedy at temperature 0."""
    def generate_ids(
        self,
        prompt: Union[str, _Ids],
        max_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[_Stop] = None,
        decoder_ids: Optional[_Ids] = None,
    ) -> Generation:
        """Stream generated token ids (ints); works without a tokenizer."""
    def embed(self, sentences: Union[str, Sequence[str]]) -> "npt.NDArray[np.float32]":
        """Sentence embeddings ``[n, dim]`` (``[dim]`` for one str), as ``kiln embed``."""
    def tokenize(self, text: str) -> List[int]: ...
    def detokenize(self, ids: _Ids) -> str: ...
    def cost(self, seq_len: Optional[int] = None, batch: int = 1) -> Dict[str, object]:
        """The cost table of ``kiln check --format json``."""
    def spec_text(self) -> str:
        """The resolved spec as TOML."""

@final
class Generation(Iterator[Union[str, int]]):
    """A running generation: text pieces (``generate``) or token ids (``generate_ids``)."""

    def __iter__(self) -> "Generation": ...
    def __next__(self) -> Union[str, int]: ...
    def close(self) -> None:
        """Stop generating (after the current token)."""
    def __enter__(self) -> "Generation": ...
    def __exit__(
        self,
        exc_type: Optional[type],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
    @property
    def tokens(self) -> List[int]:
        """The generated ids so far (stop tokens included)."""
    @property
    def text(self) -> str:
        """The text yielded so far."""
    @property
    def prompt_tokens(self) -> List[int]: ...
    @property
    def stopped(self) -> Optional[str]:
        """``max_tokens``, ``stop_token``, ``stop_string``, ``context``, ``closed``,
        ``interrupted`` or ``error``; None while running."""
