"""WordNet 3.0 for METEOR (and for the WordNet examples), from Debian's ``wordnet-base`` package, offline.

nltk needs WordNet and must never download it: ``ensure_wordnet`` copies WordNet 3.0 from Debian's ``wordnet-base``
package (``/usr/share/wordnet``) into ``<nltk_data>/corpora/wordnet/`` (default ``~/.cache/s2s_ft/nltk_data``,
override with ``$S2S_FT_NLTK_DATA``), writes the ``lexnames`` file that the Debian package lacks (the 45
lexicographer files of ``man 5 lexnames``), and puts the directory on ``nltk.data.path``. The reader used for METEOR
does not need ``index.sense`` (also absent from Debian's package; nltk only uses it for the multilingual OMW mapping
and sense-key look-ups). Where WordNet is looked for, and the error when it is missing, are defined here once.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from typing import Dict, Optional, Sequence

from s2s_ft.data.reading import DataError
from s2s_ft.fileio import write_atomic

log = logging.getLogger(__name__)

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
NLTK_DATA_ENV = "S2S_FT_NLTK_DATA"
DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
INDEX_FILES = ("index.noun", "index.verb", "index.adj", "index.adv")
WORDNET_DATA_FILES = DATA_FILES + INDEX_FILES  # what nltk's reader needs

# The WordNet 3.0 lexicographer files, in file-number order (man 5 lexnames): (name, syntactic category) with
# categories 1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB. The data files refer to them by number (lex_filenum).
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)



class WordNetMissing(DataError):
    """WordNet 3.0 is not installed where we looked (one line, with the command that installs it)."""

    def __init__(self, wordnet_dir: str, needed_by: str = "METEOR", expected: str = "data.noun, index.noun, ...",
                 way_out: str = ", or leave meteor out of --metrics"):
        self.wordnet_dir = wordnet_dir
        super().__init__(
            f"{needed_by} needs WordNet 3.0, not found in {wordnet_dir} (expected {expected}): "
            f"install it with `apt-get install wordnet-base` (or: bash scripts/setup.sh --with-wordnet){way_out}")


def present_files(wordnet_dir: str, names: Sequence[str] = WORDNET_DATA_FILES) -> list[str]:
    """The paths of ``names`` that exist in ``wordnet_dir``."""
    return [os.path.join(wordnet_dir, name) for name in names if os.path.isfile(os.path.join(wordnet_dir, name))]


def has_wordnet(wordnet_dir: str) -> bool:
    """Whether ``wordnet_dir`` holds every database file nltk's reader needs."""
    return len(present_files(wordnet_dir)) == len(WORDNET_DATA_FILES)


def default_nltk_data_dir() -> str:
    return os.environ.get(NLTK_DATA_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "s2s_ft", "nltk_data")


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` for the 45 lexicographer files."""
    return "".join(f"{number:02d}\t{name}\t{category}\n" for number, (name, category) in enumerate(LEXNAMES))


def _write_if_changed(path: str, data: bytes) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            if handle.read() == data:
                return
    write_atomic(path, data)  # a concurrent reader never sees half a file


def ensure_wordnet(nltk_data_dir: Optional[str] = None, wordnet_dir: str = DEFAULT_WORDNET_DIR) -> str:
    """Make WordNet 3.0 readable by nltk without downloading anything; returns ``<nltk_data_dir>/corpora/wordnet``.

    Copies the database files of ``wordnet_dir`` (Debian: ``/usr/share/wordnet``) that are missing or differ in
    size, writes ``lexnames``, and puts ``nltk_data_dir`` first on ``nltk.data.path``. Idempotent.
    """
    if not has_wordnet(wordnet_dir):
        raise WordNetMissing(wordnet_dir)
    nltk_data_dir = nltk_data_dir or default_nltk_data_dir()
    target = os.path.join(nltk_data_dir, "corpora", "wordnet")
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(wordnet_dir)):
        source = os.path.join(wordnet_dir, name)
        if not os.path.isfile(source) or name == "lexnames":  # skip bin/, pixmaps/, wnres/; our lexnames wins
            continue
        destination = os.path.join(target, name)
        if os.path.isfile(destination) and os.path.getsize(destination) == os.path.getsize(source):
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".tmp-")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
        log.debug("copied %s -> %s", source, destination)
    _write_if_changed(os.path.join(target, "lexnames"), lexnames_text().encode("ascii"))

    import nltk

    if nltk_data_dir not in nltk.data.path:
        nltk.data.path.insert(0, nltk_data_dir)
    return target


_READERS: Dict[str, object] = {}


def wordnet_reader(corpus_dir: str):
    """An nltk WordNetCorpusReader over ``corpus_dir`` (cached), usable without ``index.sense`` and OMW."""
    corpus_dir = os.path.abspath(corpus_dir)
    if corpus_dir not in _READERS:
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        class _WordNet30Reader(WordNetCorpusReader):
            def map_wn(self, version="wordnet"):
                # nltk maps the loaded WordNet onto "wordnet" (3.0) for OMW through index.sense; this *is* 3.0
                # and OMW is not used, so there is nothing to map.
                return None

        with warnings.catch_warnings():  # "The multilingual functions are not available ..."
            warnings.simplefilter("ignore")
            _READERS[corpus_dir] = _WordNet30Reader(corpus_dir, None)
    return _READERS[corpus_dir]
