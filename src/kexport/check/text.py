"""Check inputs for string inputs: real-looking text drawn from the model's vocabulary.

A text model is only checked where its tokenizer is exercised: each string
is built from the vocabulary the model's lookup layers hold (recorded in the
:class:`~kexport.check.samples.SamplePolicy` as ``texts``), mixed with what
real text brings and a converter gets wrong: words out of the vocabulary,
UPPER and Capitalised case, ASCII punctuation glued to words, non-ASCII text
(``"Grüße, naïve café — 東京!"``), runs of tabs, newlines and spaces,
leading/trailing whitespace, empty strings and varied lengths. An input read
whole by a lookup (no splitting: ``StringLookup``) gets single tokens
instead: vocabulary entries as they are, changed in case, out of the
vocabulary, non-ASCII and empty. Without a vocabulary the same text is built
from a few English words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EXTRA_WORDS", "portable", "sample_strings"]

#: Words no vocabulary is likely to hold, non-ASCII text among them.
EXTRA_WORDS = ("quokka", "zyxwvut", "Grüße", "naïve", "café", "—", "東京", "ÀÉÎ", "ΣΑΣ",
               "Привет", "x\u00a0y", "emoji🙂")
_FALLBACK = ("the", "cat", "sat", "on", "a", "mat", "dog", "ate", "my", "homework")
_PUNCT = (",", ".", "!", "?", "'s", ";", ":", "-", "(", ")", "\"", "...")
_SPACES = (" ", " ", " ", "  ", "\t", "\n", " \r\n ")


def _variant(rng: np.random.Generator, word: str) -> str:
    roll = rng.random()
    if roll < 0.15:
        return word.upper()
    if roll < 0.3:
        return word.capitalize()
    if roll < 0.45:
        return word + str(rng.choice(_PUNCT))
    if roll < 0.5:
        return str(rng.choice(_PUNCT)) + word
    return word


def _sentence(rng: np.random.Generator, vocab: Sequence[str], k: int) -> str:
    if k % 5 == 4:
        return ""
    if k % 5 == 1:
        return "Grüße, naïve café — 東京! " + " ".join(
            _variant(rng, str(w)) for w in rng.choice(vocab, size=3))
    n = int(rng.integers(1, 12))
    words = [str(rng.choice(EXTRA_WORDS)) if rng.random() < 0.2 else str(rng.choice(vocab))
             for _ in range(n)]
    text = words[0] if k % 5 == 0 else _variant(rng, words[0])
    for word in words[1:]:
        text += str(rng.choice(_SPACES)) + _variant(rng, word)
    return ("  " + text + " ") if k % 5 == 3 else text


def _token(rng: np.random.Generator, vocab: Sequence[str], k: int) -> str:
    word = str(rng.choice(vocab))
    return (word, word.upper(), str(rng.choice(EXTRA_WORDS)), word, "", word.capitalize(),
            "Grüße, naïve café — 東京!")[k % 7]


def sample_strings(rng: np.random.Generator, shape: tuple[int, ...],
                   vocab: Sequence[str] | None, split: bool = True) -> np.ndarray:
    """An object array of ``shape`` holding Python ``str`` (see the module doc).

    Args:
        rng: the case's generator.
        shape: the array's shape.
        vocab: the words the model knows (``None`` or empty: a few English words).
        split: whether the model splits each string into words (a sentence per
            element) or reads it whole (a token per element).
    """
    import numpy as np

    words = [w for w in (vocab or ()) if w] or list(_FALLBACK)
    size = int(np.prod(shape, dtype=np.int64))
    start = 1 if size == 1 else int(rng.integers(0, 35))  # one string: the mixed one
    make = _sentence if split else _token
    flat = [make(rng, words, start + k) for k in range(size)]
    out = np.empty(size, dtype=object)
    out[:] = flat
    return out.reshape(shape)


def portable(array: Any) -> Any:
    """``array`` as a ``.npz`` file can hold without pickling: an object array of
    ``str``/``bytes`` becomes a NumPy unicode array (bytes decoded as UTF-8);
    anything else is returned as it is."""
    import numpy as np

    array = np.asarray(array)
    if array.dtype.kind not in "OS":
        return array
    flat = [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)
            for v in array.ravel()]
    return np.asarray(flat, dtype=str).reshape(array.shape) if flat else \
        np.zeros(array.shape, dtype="<U1")
