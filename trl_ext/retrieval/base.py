"""The retriever protocol of CalibAdv's search-agent rollout and its document type.

A retriever answers a batch of queries with up to ``top_k`` documents each, best first::

    retriever.search(["who directed inception", ...], top_k=3) -> [[Document, ...], ...]

A document is the triple ``(id | None, title, text)``: :class:`Document` (a ``NamedTuple``, so it pickles for
``gather_object`` and compares by value). A plain callable ``f(queries, top_k)`` or a ``"module:attr"`` string is
turned into a retriever by :func:`as_retriever`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "CallableRetriever",
    "Document",
    "DocumentLike",
    "Retriever",
    "as_retriever",
    "check_top_k",
    "format_documents",
    "load_corpus_jsonl",
]


class Document(NamedTuple):
    """A retrieved document: ``(id, title, text)``.

    Attributes:
        id: the retriever's document id (a string), or None when the source has none.
        title: the title (the first line of a ``contents`` field).
        text: the body (the remaining lines of ``contents``).
    """

    id: str | None
    title: str
    text: str

    @property
    def contents(self) -> str:
        """``"title\\ntext"``, the Search-R1 / FlashRAG ``contents`` field."""
        return f"{self.title}\n{self.text}"

    @property
    def key(self) -> str:
        """The key by which CalibAdv compares documents: the id if there is one, else ``"(Title: T) text"``."""
        return self.id if self.id is not None else f"(Title: {self.title}) {self.text}"

    @classmethod
    def from_contents(cls, contents: str, id: str | None = None) -> Document:
        """Split a ``contents`` string: the first line is the title, the rest the text."""
        title, _, text = contents.partition("\n")
        return cls(id, title, text)

    @classmethod
    def coerce(cls, value: DocumentLike) -> Document:
        """A :class:`Document` from a Document, a ``(id, title, text)`` triple, a ``contents`` string, or a mapping
        with ``id`` (optional) and either ``contents`` or ``title`` and ``text``.

        Raises:
            ValueError: naming the value if it has none of these shapes.
        """
        if isinstance(value, Document):
            return value
        if isinstance(value, str):
            return cls.from_contents(value)
        if isinstance(value, Mapping):
            doc_id = value.get("id")
            doc_id = None if doc_id is None else str(doc_id)
            if isinstance(value.get("contents"), str):
                return cls.from_contents(value["contents"], doc_id)
            if "title" in value or "text" in value:
                return cls(doc_id, str(value.get("title") or ""), str(value.get("text") or ""))
        elif isinstance(value, Sequence) and len(value) == 3:
            doc_id = None if value[0] is None else str(value[0])
            return cls(doc_id, str(value[1]), str(value[2]))
        raise ValueError(
            "a document must be a Document, an (id, title, text) triple, a 'title\\ntext' string or a mapping with "
            f"'contents' or 'title'/'text' (and optionally 'id'); got {value!r}"
        )


#: Anything :meth:`Document.coerce` accepts.
DocumentLike = Document | str | Mapping[str, Any] | Sequence[Any]


@runtime_checkable
class Retriever(Protocol):
    """Batch retrieval: ``search(queries, top_k)`` returns, for each query, at most ``top_k`` documents, best first.

    An implementation must return exactly ``len(queries)`` lists and raise (never return empty lists) when the
    backend fails; an empty list means "no match".
    """

    def search(self, queries: list[str], top_k: int) -> list[list[Document]]: ...


def check_top_k(top_k: int) -> int:
    """Validate the number of documents per query (``calibadv_topk``): a positive integer."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k (calibadv_topk) must be a positive integer, got {top_k!r}")
    return top_k


def format_documents(documents: Iterable[DocumentLike]) -> str:
    """Search-R1's observation body: ``"Doc 1(Title: T1) text1\\nDoc 2(Title: T2) text2..."`` (not stripped; the
    rollout strips it and wraps it in ``<information>...</information>``)."""
    return "".join(
        f"Doc {rank}(Title: {doc.title}) {doc.text}\n"
        for rank, doc in enumerate((Document.coerce(d) for d in documents), start=1)
    )


def load_corpus_jsonl(path: str | Path) -> list[Document]:
    """Read a JSONL corpus: one object per line with ``text`` (``title`` and ``id`` optional), or with ``contents`` =
    ``"title\\ntext"`` (``id`` optional). Blank lines are skipped.

    Raises:
        ValueError: naming the file and line of a malformed record, or of a record with neither ``text`` nor
            ``contents`` (listing the fields it has: a corpus with ``title``/``body`` was read as empty documents).
    """
    documents = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, Mapping):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: malformed corpus record ({error})") from error
            if "text" not in record and not isinstance(record.get("contents"), str):
                raise ValueError(
                    f"{path}, line {number}: a corpus record needs a 'text' field ('title' and 'id' optional) or a "
                    f"'contents' string ('title\\ntext'); this one has the fields {sorted(record)}. Rename the "
                    "fields when writing the corpus"
                )
            documents.append(Document.coerce(record))
    return documents


class CallableRetriever:
    """Wrap a function ``f(queries: list[str], top_k: int) -> list[list[DocumentLike]]`` as a :class:`Retriever`,
    coercing its documents with :meth:`Document.coerce` and checking that it answers every query."""

    def __init__(self, function: Callable[[list[str], int], Sequence[Sequence[DocumentLike]]]) -> None:
        self.function = function

    def search(self, queries: list[str], top_k: int) -> list[list[Document]]:
        check_top_k(top_k)
        results = self.function(list(queries), top_k)
        if len(results) != len(queries):
            raise ValueError(
                f"retriever {self.function!r} returned {len(results)} result lists for {len(queries)} queries"
            )
        return [[Document.coerce(doc) for doc in docs][:top_k] for docs in results]

    __call__ = search


def as_retriever(value: Retriever | Callable[..., Any] | str) -> Retriever:
    """A :class:`Retriever` from (``calibadv_retriever`` accepts the last three):

    * an object with a ``search(queries, top_k)`` method (returned as is);
    * a callable ``f(queries, top_k)`` (wrapped in :class:`CallableRetriever`);
    * a ``"module:attr"`` string naming either of those; a class named so is instantiated without arguments.

    ``"bm25"`` and ``"http"`` need settings (a corpus, a URL) and are built by the trainer, not here.

    Raises:
        ValueError: for a string that is not ``"module:attr"`` or names nothing usable.
    """
    if isinstance(value, str):
        module_name, _, attribute = value.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"calibadv_retriever must be 'bm25', 'http', a callable or 'module:attr', got {value!r}")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        if isinstance(target, type):
            target = target()
        value = target
    search = getattr(value, "search", None)
    if callable(search):
        return value  # type: ignore[return-value]
    if callable(value):
        return CallableRetriever(value)
    raise ValueError(
        f"calibadv_retriever must be a retriever (with .search), a callable or 'module:attr'; got {value!r}"
    )
