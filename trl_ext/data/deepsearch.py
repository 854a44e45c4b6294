"""``deepsearch``: a synthetic multi-hop question-answering task for search agents (CalibAdv), with no downloads.

A small encyclopedia of invented entities is generated from a seed (``world_seed``, default 0): countries, cities
(each in a country), people (a birth year and a birth city), film studios (a founding year and a headquarters city),
films (a year, a director and a studio) and novels (a year and an author). Every entity has one document. Documents
only point *forward* along the chain film -> director -> city -> country (a person's document never lists their
films, a city's never lists its people), and the year ranges do not overlap (people 1920-1965, studios 1900-1919,
films and novels 1970-2023), so the answer of a question is never in the document of the entity it names: it needs
two or three searches, e.g.

    "Where was the director of the film Brodanu Kelvi born?"   film doc -> director -> person doc -> city   (2 hops)
    "In which country was the director of the film ... born?"  film -> person -> city -> country           (3 hops)

Every name is made of invented words, each used once in the whole world, so a search for an entity's name finds
its document with BM25.

```python
from trl_ext.data import get_task
from trl_ext.data.deepsearch import deepsearch_corpus
from trl_ext.retrieval import BM25Retriever

task = get_task("deepsearch")
dataset = task.make_dataset(256, 0)        # prompt, question, golden_answers, id, hops, supporting_doc_ids
retriever = BM25Retriever(deepsearch_corpus())
```

The reward is answer F1 x format validity (:func:`trl_ext.rewards.qa.qa_f1_format_reward`), reading the
``golden_answers`` column (list[str]). ``write_deepsearch_corpus_jsonl`` writes the corpus for
``calibadv_corpus_path``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl_ext.data.tasks import Task, register_task
from trl_ext.retrieval.base import Document
from trl_ext.rewards.qa import qa_f1_format_reward

if TYPE_CHECKING:  # `datasets` is imported lazily so that `import trl_ext.data` stays cheap
    from datasets import Dataset

__all__ = [
    "DEEPSEARCH_ALPHABET",
    "DEEPSEARCH_TEMPLATES",
    "SEARCH_INSTRUCTION",
    "DeepSearchQuestion",
    "DeepSearchWorld",
    "build_deepsearch_world",
    "deepsearch_corpus",
    "deepsearch_questions",
    "make_deepsearch_dataset",
    "make_search_prompt",
    "write_deepsearch_corpus_jsonl",
]

#: A Search-R1 style instruction; ``{question}`` is replaced by the question.
SEARCH_INSTRUCTION: str = (
    "Answer the question below. Reason inside <think> and </think> every time you receive new information. "
    "If some knowledge is missing, search for it with <search> query </search>; the results come back between "
    "<information> and </information>, and you may search as many times as you need. When you know the answer, "
    "give only the short answer inside <answer> and </answer>, for example <answer> Beijing </answer>.\n"
    "Question: {question}\n"
)

#: Every character the prompts, documents, tags and answers use (for ``build_char_tokenizer(alphabet=...)``).
DEEPSEARCH_ALPHABET: str = string.ascii_letters + string.digits + string.punctuation + " \n"

#: Question templates: name -> (question pattern, hops).
DEEPSEARCH_TEMPLATES: dict[str, tuple[str, int]] = {
    "film_director_birthplace": ("Where was the director of the film {film} born?", 2),
    "film_director_birth_year": ("In what year was the director of the film {film} born?", 2),
    "film_studio_city": ("In which city is the studio that produced the film {film} headquartered?", 2),
    "novel_author_birthplace": ("In which city was the author of the novel {novel} born?", 2),
    "film_director_birth_country": ("In which country was the director of the film {film} born?", 3),
}

# World size: enough distinct questions (5 templates over 48 films and 32 novels: 224) and distractors.
_NUM_COUNTRIES, _NUM_CITIES, _NUM_PEOPLE, _NUM_STUDIOS, _NUM_FILMS, _NUM_NOVELS = 6, 18, 36, 8, 48, 32
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "gl")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")
_OCCUPATIONS = ("film director", "novelist", "screenwriter", "painter", "architect")
_FILM_GENRES = ("drama", "comedy", "thriller", "documentary", "western", "musical")
_NOVEL_GENRES = ("historical", "science fiction", "crime", "romance", "satirical")
_STUDIO_SUFFIXES = ("Pictures", "Studios", "Films")


def make_search_prompt(question: str) -> str:
    """The plain-text prompt: :data:`SEARCH_INSTRUCTION` with the question filled in."""
    return SEARCH_INSTRUCTION.format(question=question)


@dataclass(frozen=True)
class DeepSearchQuestion:
    """One multi-hop question of the world.

    Attributes:
        id: ``"deepsearch/<template>/<entity doc id>"``, stable for a given world seed.
        template: a key of :data:`DEEPSEARCH_TEMPLATES`.
        question: the question text.
        golden_answers: accepted answers (one alias).
        hops: documents to read in sequence, the named entity's first (2 or 3).
        entity: the name the question mentions.
        supporting_doc_ids: the ids of those documents, in reading order.
    """

    id: str
    template: str
    question: str
    golden_answers: tuple[str, ...]
    hops: int
    entity: str
    supporting_doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeepSearchWorld:
    """A generated world: its documents (corpus order) and every question it supports."""

    seed: int
    documents: tuple[Document, ...]
    questions: tuple[DeepSearchQuestion, ...]


class _Names:
    """Invented capitalised words, each handed out once."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self) -> str:
        while True:
            syllables = self.rng.choice((2, 2, 3))
            word = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            word = (word + self.rng.choice(_CODAS)).capitalize()
            if word.lower() not in self.used:
                self.used.add(word.lower())
                return word


@lru_cache(maxsize=8)
def build_deepsearch_world(world_seed: int = 0) -> DeepSearchWorld:
    """Generate the world of ``world_seed`` (deterministic; cached)."""
    if not isinstance(world_seed, int):
        raise ValueError(f"`world_seed` must be an integer, got {world_seed!r}.")
    rng = random.Random(world_seed)
    names = _Names(rng)
    documents: list[Document] = []

    countries = [names.word() for _ in range(_NUM_COUNTRIES)]
    cities = []  # (doc id, name, country)
    for i in range(_NUM_CITIES):
        name, country = names.word(), countries[i % _NUM_COUNTRIES]
        cities.append((f"city-{i}", name, country))
    capitals = {country: name for _, name, country in cities[:_NUM_COUNTRIES]}
    for i, country in enumerate(countries):
        documents.append(
            Document(
                f"country-{i}",
                country,
                f"{country} is a country. Its capital and largest city is {capitals[country]}.",
            )
        )
    for doc_id, name, country in cities:
        kind = "capital" if capitals[country] == name else "city"
        documents.append(Document(doc_id, name, f"{name} is a {kind} in {country}, on the river {names.word()}."))

    people = []  # (doc id, full name, birth year, birth city index, occupation)
    for i in range(_NUM_PEOPLE):
        full_name = f"{names.word()} {names.word()}"
        year, city, occupation = rng.randint(1920, 1965), rng.randrange(_NUM_CITIES), rng.choice(_OCCUPATIONS)
        people.append((f"person-{i}", full_name, year, city, occupation))
        documents.append(
            Document(
                f"person-{i}",
                full_name,
                f"{full_name} (born {year}) is a {occupation}. {full_name.split()[0]} was born in {cities[city][1]}.",
            )
        )

    studios = []  # (doc id, name, city index)
    for i in range(_NUM_STUDIOS):
        name, city, year = f"{names.word()} {rng.choice(_STUDIO_SUFFIXES)}", rng.randrange(_NUM_CITIES), 1900 + i
        studios.append((f"studio-{i}", name, city))
        documents.append(
            Document(
                f"studio-{i}", name, f"{name} is a film studio founded in {year}, headquartered in {cities[city][1]}."
            )
        )

    questions: list[DeepSearchQuestion] = []

    def add(template: str, entity_doc: str, entity: str, answer: str, chain: tuple[str, ...], **fields: str) -> None:
        pattern, hops = DEEPSEARCH_TEMPLATES[template]
        assert len(chain) == hops
        questions.append(
            DeepSearchQuestion(
                f"deepsearch/{template}/{entity_doc}",
                template,
                pattern.format(**fields),
                (answer,),
                hops,
                entity,
                chain,
            )
        )

    for i in range(_NUM_FILMS):
        title = f"{names.word()} {names.word()}"
        year, genre = rng.randint(1970, 2023), rng.choice(_FILM_GENRES)
        director = people[rng.randrange(_NUM_PEOPLE)]
        studio = studios[rng.randrange(_NUM_STUDIOS)]
        doc_id = f"film-{i}"
        documents.append(
            Document(
                doc_id,
                title,
                f"{title} is a {year} {genre} film directed by {director[1]}. It was produced by {studio[1]}.",
            )
        )
        birth_city = cities[director[3]]
        add("film_director_birthplace", doc_id, title, birth_city[1], (doc_id, director[0]), film=title)
        add("film_director_birth_year", doc_id, title, str(director[2]), (doc_id, director[0]), film=title)
        add("film_studio_city", doc_id, title, cities[studio[2]][1], (doc_id, studio[0]), film=title)
        add(
            "film_director_birth_country",
            doc_id,
            title,
            birth_city[2],
            (doc_id, director[0], birth_city[0]),
            film=title,
        )

    for i in range(_NUM_NOVELS):
        title = f"{names.word()} {names.word()}"
        year, genre = rng.randint(1970, 2023), rng.choice(_NOVEL_GENRES)
        author = people[rng.randrange(_NUM_PEOPLE)]
        doc_id = f"novel-{i}"
        documents.append(
            Document(doc_id, title, f"{title} is a {genre} novel by {author[1]}, first published in {year}.")
        )
        add("novel_author_birthplace", doc_id, title, cities[author[3]][1], (doc_id, author[0]), novel=title)

    return DeepSearchWorld(world_seed, tuple(documents), tuple(questions))


def deepsearch_corpus(world_seed: int = 0) -> list[Document]:
    """The world's documents, in corpus order, as :class:`trl_ext.retrieval.Document` (for ``BM25Retriever``)."""
    return list(build_deepsearch_world(world_seed).documents)


def deepsearch_questions(world_seed: int = 0) -> list[DeepSearchQuestion]:
    """Every distinct question of the world (224 for the default sizes)."""
    return list(build_deepsearch_world(world_seed).questions)


def write_deepsearch_corpus_jsonl(path: str | Path, world_seed: int = 0) -> Path:
    """Write the corpus as JSONL (``id``, ``title``, ``text`` per line), the format of ``calibadv_corpus_path``."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        for doc in deepsearch_corpus(world_seed):
            handle.write(json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    return path


def make_deepsearch_dataset(
    num_rows: int = 1024,
    seed: int = 0,
    *,
    world_seed: int = 0,
    prompt_builder: Callable[[str], Any] | None = None,
) -> Dataset:
    """Rows drawn uniformly (with replacement, by ``seed``) from the questions of the world of ``world_seed``.

    Args:
        num_rows: number of rows (questions repeat when it exceeds the world's distinct questions). Default 1024.
        seed: seed of the draw; the same arguments always give the same rows. Default 0.
        world_seed: seed of the world (corpus and questions); keep it equal to the corpus's. Default 0.
        prompt_builder: question -> prompt (a string, or a list of messages for a conversational prompt). Default
            :func:`make_search_prompt` (plain text).

    Returns:
        A `datasets.Dataset` with columns ``prompt``, ``question`` (str), ``golden_answers`` (list[str]), ``id`` (str,
        the same for every row of the same question), ``hops`` (int, 2 or 3) and ``supporting_doc_ids``
        (list[str], the documents of the reasoning chain in order).
    """
    from datasets import Dataset

    if not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"`num_rows` must be a positive integer, got {num_rows!r}.")
    if not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    builder = make_search_prompt if prompt_builder is None else prompt_builder
    questions = build_deepsearch_world(world_seed).questions
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {
        "prompt": [],
        "question": [],
        "golden_answers": [],
        "id": [],
        "hops": [],
        "supporting_doc_ids": [],
    }
    for _ in range(num_rows):
        question = questions[rng.randrange(len(questions))]
        rows["prompt"].append(builder(question.question))
        rows["question"].append(question.question)
        rows["golden_answers"].append(list(question.golden_answers))
        rows["id"].append(question.id)
        rows["hops"].append(question.hops)
        rows["supporting_doc_ids"].append(list(question.supporting_doc_ids))
    return Dataset.from_dict(rows)


register_task(
    Task(
        name="deepsearch",
        description="Synthetic multi-hop QA over a generated encyclopedia (2-3 searches); F1 x format reward.",
        make_dataset=make_deepsearch_dataset,
        reward_funcs=[qa_f1_format_reward],
        max_completion_length=2048,
        alphabet=DEEPSEARCH_ALPHABET,
        binary_rewards=False,
        metadata={
            "corpus": deepsearch_corpus,
            "templates": {name: hops for name, (_, hops) in DEEPSEARCH_TEMPLATES.items()},
            "reward_columns": ["golden_answers"],
        },
    )
)
