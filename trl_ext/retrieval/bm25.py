"""BM25 retrieval over an in-memory corpus, built on the ``bm25s`` package.

Tokenisation: lowercase, words of two or more word characters (``\\b\\w\\w+\\b``, scikit-learn's pattern, which
``bm25s`` also uses), English stop words removed (``bm25s.stopwords.STOPWORDS_EN``). A document is indexed on its
title and text together.

Determinism: the vocabulary is numbered in order of first occurrence in the corpus (``bm25s``'s own tokeniser
numbers it by set iteration, which depends on the hash seed), so every process builds the same index; the top k are
ordered by descending score with ties broken by corpus order.

Decision: documents with score 0 (no query word in common) are never returned, so a query with no indexed word
(empty, or only stop words) returns ``[]`` rather than the first k documents of the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trl_ext.retrieval.base import Document, DocumentLike, check_top_k, load_corpus_jsonl

__all__ = ["BM25Retriever"]

_WORD = re.compile(r"(?u)\b\w\w+\b")


def _import_bm25s() -> Any:
    try:
        import bm25s
        import bm25s.stopwords
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "BM25Retriever needs the `bm25s` package: pip install 'bm25s>=0.2' (from a trl-ext checkout: pip install -e "
            "'.[retrieval]')"
        ) from error
    return bm25s


class BM25Retriever:
    """BM25 top-k over a fixed corpus.

    Args:
        corpus: the documents (anything :meth:`Document.coerce` accepts: Documents, ``{"id", "title", "text"}`` or
            ``{"contents"}`` mappings, ``"title\\ntext"`` strings). At least one.
        k1, b: BM25 parameters (defaults 1.5 and 0.75, ``bm25s``'s).
        method: ``bm25s`` scoring variant: ``"lucene"`` (default), ``"robertson"``, ``"atire"``, ``"bm25l"``,
            ``"bm25+"``.

    The index is built once, in the constructor. ``search`` returns the stored :class:`Document` objects.
    """

    def __init__(
        self, corpus: Iterable[DocumentLike], *, k1: float = 1.5, b: float = 0.75, method: str = "lucene"
    ) -> None:
        bm25s = _import_bm25s()
        self.documents: list[Document] = [Document.coerce(doc) for doc in corpus]
        if not self.documents:
            raise ValueError("BM25Retriever needs a corpus with at least one document")
        self._stopwords = frozenset(bm25s.stopwords.STOPWORDS_EN)
        self._vocab: dict[str, int] = {}
        token_ids = [
            [self._vocab.setdefault(token, len(self._vocab)) for token in self.tokenize(f"{doc.title}\n{doc.text}")]
            for doc in self.documents
        ]
        self._model = None
        if self._vocab:  # a corpus without a single indexable word matches nothing
            self._model = bm25s.BM25(k1=k1, b=b, method=method)
            self._model.index((token_ids, self._vocab), create_empty_token=False, show_progress=False)

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs: Any) -> BM25Retriever:
        """Build from a JSONL corpus (see :func:`trl_ext.retrieval.base.load_corpus_jsonl`)."""
        return cls(load_corpus_jsonl(path), **kwargs)

    def tokenize(self, text: str) -> list[str]:
        """Lowercased words of two or more characters, English stop words removed."""
        return [word for word in _WORD.findall(text.lower()) if word not in self._stopwords]

    def scores(self, query: str) -> Any:
        """(num_documents,) BM25 scores of one query (a numpy array; zeros if no query word is indexed)."""
        import numpy as np

        ids = [self._vocab[word] for word in self.tokenize(query) if word in self._vocab]
        if self._model is None or not ids:
            return np.zeros(len(self.documents), dtype=np.float32)
        return np.asarray(self._model.get_scores(ids))

    def search(self, queries: list[str], top_k: int) -> list[list[Document]]:
        """For each query, the ``top_k`` documents with the highest positive score, best first, ties in corpus
        order."""
        import numpy as np

        check_top_k(top_k)
        results = []
        for query in queries:
            scores = self.scores(query)
            candidates = np.flatnonzero(scores > 0)  # ascending corpus order
            if candidates.size > top_k:
                # Keep every candidate scoring at least the k-th best score (all of its ties), then sort stably.
                threshold = np.partition(scores[candidates], candidates.size - top_k)[candidates.size - top_k]
                candidates = candidates[scores[candidates] >= threshold]
            order = candidates[np.argsort(-scores[candidates], kind="stable")][:top_k]
            results.append([self.documents[int(i)] for i in order])
        return results

    __call__ = search
