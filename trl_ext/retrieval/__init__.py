"""Retrievers for search-agent rollouts: the protocol, BM25 over a local corpus, and a Search-R1 HTTP client.

``bm25s`` and ``requests`` are imported only when a retriever is built or queried
(from a checkout: ``pip install -e '.[retrieval]'``).
"""

from trl_ext.retrieval.base import (
    CallableRetriever,
    Document,
    DocumentLike,
    Retriever,
    as_retriever,
    check_top_k,
    format_documents,
    load_corpus_jsonl,
)
from trl_ext.retrieval.bm25 import BM25Retriever
from trl_ext.retrieval.http import HTTPRetriever

__all__ = [
    "BM25Retriever",
    "CallableRetriever",
    "Document",
    "DocumentLike",
    "HTTPRetriever",
    "Retriever",
    "as_retriever",
    "check_top_k",
    "format_documents",
    "load_corpus_jsonl",
]
