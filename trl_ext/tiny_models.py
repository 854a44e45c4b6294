"""Offline builders for tiny models and tokenizers.

Tests, the quickstart and the benchmarks never download anything (see "Conventions" in the design notes). They build
a character-level tokenizer with the `tokenizers` library and a randomly initialised Qwen2 of a few hundred thousand
parameters from a config, optionally saved as an ordinary Hugging Face checkpoint so that every code path that takes a
model *name* (``GRPOTrainer(model=path)``, ``AutoModelForCausalLM.from_pretrained(path)``, recipe YAMLs, the CLI) works
unchanged.

`build_tiny_vlm_checkpoint` does the same for a vision-language model: a tiny LLaVA (one-layer CLIP vision tower,
MLP projector, the tiny Qwen2 as language model) with a `LlavaProcessor` whose tokenizer is the character tokenizer
plus the Qwen2-VL vision tokens, loadable with ``AutoProcessor`` / ``AutoModelForImageTextToText`` and trainable by
``GRPOTrainer(model=path)`` on a dataset with an ``image`` column; it needs no ``torchvision``.
`build_tiny_qwen_vl_checkpoint` builds a tiny Qwen2.5-VL or Qwen2-VL (DIVA-GRPO's model family: dynamic image
resolution, ``image_grid_thw``) with the family's processor, built without torchvision too
(`trl_ext.processors`).

Example:

```python
from trl_ext.tiny_models import build_tiny_checkpoint, build_tiny_vlm_checkpoint

path = build_tiny_checkpoint("/tmp/tiny-qwen2")  # reused on the next call with the same settings
trainer = GRPOTrainer(model=path, reward_funcs=..., args=GRPOConfig(use_cpu=True, ...), train_dataset=...)

vlm_path = build_tiny_vlm_checkpoint("/tmp/tiny-vlm")  # train_dataset: conversational "prompt" + PIL "image" columns
```
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from trl_ext._quiet import progress_bars_disabled

if TYPE_CHECKING:  # heavy imports stay inside the functions so that `import trl_ext.tiny_models` is cheap
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

__all__ = [
    "DEFAULT_ALPHABET",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "CHAT_TEMPLATE",
    "build_char_tokenizer",
    "build_tiny_model",
    "build_tiny_checkpoint",
    "VLM_SPECIAL_TOKENS",
    "VLM_CHAT_TEMPLATE",
    "build_tiny_vlm_checkpoint",
    "VIDEO_TOKEN",
    "QWEN_VL_FAMILIES",
    "QWEN_VL_PIXEL_LIMITS",
    "build_tiny_qwen_vl_checkpoint",
]

#: Characters of the default vocabulary: digits, lowercase letters, space, newline and the punctuation the synthetic
#: tasks use. Every other character encodes as ``<unk>``.
DEFAULT_ALPHABET: str = "0123456789abcdefghijklmnopqrstuvwxyz +-*/=?:,.;!'\"()<>[]_#\n"

PAD_TOKEN: str = "<pad>"
EOS_TOKEN: str = "<eos>"
UNK_TOKEN: str = "<unk>"
#: Special tokens, in id order: ``<pad>`` = 0, ``<eos>`` = 1 (also the bos token), ``<unk>`` = 2.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

#: Minimal chat template: message contents concatenated with no separator, each assistant turn closed by eos. It uses no
#: characters of its own, so it renders with any alphabet; ``add_generation_prompt`` adds nothing.
CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{{ message['content'] if message['content'] is string else message['content'] | map(attribute='text') | join('') }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# Bump when the files written by `build_tiny_checkpoint` change meaning, so that stale caches are rebuilt.
_CHECKPOINT_FORMAT_VERSION = 1
_STAMP_FILE = "trl_ext_tiny_checkpoint.json"


# The pre-tokenizer regex of `transformers.Qwen2Tokenizer` (see `build_char_tokenizer` for why we match it).
_QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as used by byte-level BPE tokenizers."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return mapping


def _validate_alphabet(alphabet: str) -> str:
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"`alphabet` must be a non-empty string of characters, got {alphabet!r}.")
    non_ascii = sorted({c for c in alphabet if ord(c) > 127})
    if non_ascii:
        raise ValueError(f"`alphabet` must contain ASCII characters only (one byte each); got {non_ascii!r}.")
    duplicates = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if duplicates:
        raise ValueError(f"`alphabet` must not repeat characters; repeated: {duplicates!r}.")
    return alphabet


def build_char_tokenizer(save_dir: str | None = None, alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """Build a character-level fast tokenizer, offline.

    Every character of `alphabet` is one token; special tokens come first with fixed ids (``<pad>`` = 0, ``<eos>`` = 1,
    ``<unk>`` = 2), so the vocabulary size is ``len(alphabet) + 3``. ``<eos>`` doubles as the bos token; no special
    token is added when encoding (TRL tokenizes plain-text prompts as they are). Decoding concatenates the characters
    back, so ``decode(encode(text)) == text`` for any text over the alphabet; other characters encode as ``<unk>``
    here, and are dropped by the `Qwen2Tokenizer` that `AutoTokenizer` loads from a saved checkpoint. A minimal chat
    template (`CHAT_TEMPLATE`) makes conversational prompts work too.

    Internally this is a byte-level BPE with no merges (one token per character) whose pipeline matches
    `transformers.Qwen2Tokenizer`, so a saved checkpoint reloads with identical token ids through ``AutoTokenizer``.

    Args:
        save_dir: If given, the tokenizer is also saved there with ``save_pretrained``.
        alphabet: The characters of the vocabulary: ASCII, no repeats. Defaults to `DEFAULT_ALPHABET` (digits, lowercase
            letters, space, newline and common punctuation). A smaller alphabet gives a smaller vocabulary, which makes
            a random policy hit a given answer more often.

    Returns:
        A `transformers.PreTrainedTokenizerFast` with ``pad_token``, ``eos_token``, ``bos_token`` and ``unk_token`` set
        and left padding.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _validate_alphabet(alphabet)
    byte_to_symbol = _bytes_to_unicode()
    # One vocabulary entry per character, spelled in the byte-level alphabet (space is "Ġ", newline "Ċ", ...).
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in alphabet:
        vocab[byte_to_symbol[ord(char)]] = len(vocab)

    # A byte-level BPE with no merges is a character-level tokenizer. We use exactly the pipeline that
    # `transformers.Qwen2Tokenizer` rebuilds, because `AutoTokenizer` forces that class on any checkpoint whose model
    # type is qwen2 and would otherwise silently change how spaces and newlines tokenize after a save/load round trip.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    save_dir: str | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """Build a randomly initialised tiny Qwen2 causal LM for `tokenizer`, offline and deterministically.

    The same arguments always give the same weights (the global torch RNG is left untouched). The vocabulary is the
    tokenizer's, input and output embeddings are tied, and ``pad_token_id``/``eos_token_id``/``bos_token_id`` in both
    the config and the generation config match the tokenizer, so generation stops at eos. Weights are float32.

    Args:
        tokenizer: The tokenizer whose vocabulary and special tokens the model uses (e.g. from
            `build_char_tokenizer`).
        save_dir: If given, the model is also saved there (safetensors) with ``save_pretrained``.
        hidden_size: Width of the residual stream. Default 64. Must be divisible by `num_heads`.
        num_layers: Number of decoder layers. Default 2.
        num_heads: Number of attention heads. Default 4.
        num_kv_heads: Number of key/value heads (grouped-query attention); must divide `num_heads`. Default 2;
            ``None`` means `num_heads`.
        intermediate_size: Width of the MLP. Default ``4 * hidden_size``.
        max_position_embeddings: Longest sequence (prompt + completion), in tokens. Default 256.
        initializer_range: Standard deviation of the normal weight initialisation. Default 0.02 (the Hugging Face
            default). For RL from scratch use 0.1 (as `trl_ext.data.QUICKSTART_SETTINGS` does): at 0.02 the random
            policy barely depends on its prompt and learning can sit on a long plateau.
        seed: Seed of the weight initialisation. Default 0.

    Returns:
        A `transformers.Qwen2ForCausalLM` in train mode on CPU.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}).")
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"`num_kv_heads` must be a positive divisor of `num_heads` ({num_heads}), got {num_kv_heads}."
        )
    if max_position_embeddings < 1:
        raise ValueError(f"`max_position_embeddings` must be positive, got {max_position_embeddings}.")

    special_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
    }
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size if intermediate_size is not None else 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        use_cache=True,
        **special_ids,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(**special_ids)
    if save_dir is not None:
        model.save_pretrained(save_dir)
    return model


def _checkpoint_settings(alphabet: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": _CHECKPOINT_FORMAT_VERSION, "alphabet": alphabet, "model": model_kwargs}


def _is_complete_checkpoint(save_dir: str, settings: dict[str, Any]) -> bool:
    stamp_path = os.path.join(save_dir, _STAMP_FILE)
    try:
        with open(stamp_path, encoding="utf-8") as stamp_file:
            stamp = json.load(stamp_file)
    except (OSError, ValueError):
        return False
    if stamp.get("settings") != settings:
        return False
    return all(os.path.isfile(os.path.join(save_dir, name)) for name in stamp.get("files", []))


def build_tiny_checkpoint(
    save_dir: str | os.PathLike[str], *, alphabet: str = DEFAULT_ALPHABET, **model_kwargs: Any
) -> str:
    """Save a tiny tokenizer + model checkpoint to `save_dir` and return its path.

    The result loads offline with ``AutoTokenizer.from_pretrained(path)`` and
    ``AutoModelForCausalLM.from_pretrained(path)`` and can be passed as ``GRPOTrainer(model=path, ...)``.

    Cache-friendly: a stamp file records the settings; if `save_dir` already holds a complete checkpoint built with the
    same settings, it is reused as is. Files are written to a temporary directory and moved in one by one with
    atomic renames, stamp last, so concurrent builders (e.g. pytest-xdist workers) never expose a half-written file.
    Other files in `save_dir` are left alone.

    Args:
        save_dir: Directory to write (created if missing).
        alphabet: Passed to `build_char_tokenizer`.
        **model_kwargs: Passed to `build_tiny_model` (``hidden_size``, ``num_layers``, ``num_heads``, ``seed``, ...).

    Returns:
        `save_dir` as a string.
    """
    save_dir = os.fspath(save_dir)
    alphabet = _validate_alphabet(alphabet)
    settings = _checkpoint_settings(alphabet, dict(sorted(model_kwargs.items())))
    try:
        json.dumps(settings)
    except TypeError as error:
        raise ValueError(f"`build_tiny_checkpoint` keyword arguments must be JSON-serialisable: {error}") from error
    if _is_complete_checkpoint(save_dir, settings):
        return save_dir

    os.makedirs(save_dir, exist_ok=True)
    staging_dir = tempfile.mkdtemp(prefix=".tiny-staging-", dir=save_dir)
    try:
        tokenizer = build_char_tokenizer(alphabet=alphabet)
        # The tokenizer's length limit follows the model's, so long prompts do not trigger a spurious warning.
        tokenizer.model_max_length = max(tokenizer.model_max_length, model_kwargs.get("max_position_embeddings", 0))
        tokenizer.save_pretrained(staging_dir)
        with progress_bars_disabled():  # a few-kB model: no "Writing model shards" bar
            build_tiny_model(tokenizer, staging_dir, **model_kwargs)
        files = sorted(os.listdir(staging_dir))
        for name in files:
            os.replace(os.path.join(staging_dir, name), os.path.join(save_dir, name))
        stamp_tmp = os.path.join(staging_dir, _STAMP_FILE)
        with open(stamp_tmp, "w", encoding="utf-8") as stamp_file:
            json.dump({"settings": settings, "files": files}, stamp_file, indent=2, sort_keys=True)
        os.replace(stamp_tmp, os.path.join(save_dir, _STAMP_FILE))
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return save_dir


# ------------------------------------------------------------------------------------------------------------------
# A tiny vision-language model
# ------------------------------------------------------------------------------------------------------------------

#: Vision special tokens of the tiny VLM, appended after the character vocabulary in this order. They are named as in
#: Qwen2-VL / Qwen2.5-VL, so code that looks up ``<|image_pad|>`` (as TRL does) finds the image placeholder.
VISION_START_TOKEN: str = "<|vision_start|>"
VISION_END_TOKEN: str = "<|vision_end|>"
IMAGE_TOKEN: str = "<|image_pad|>"
VLM_SPECIAL_TOKENS: tuple[str, ...] = (VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN)

#: Chat template of the tiny VLM: like `CHAT_TEMPLATE` (contents concatenated, assistant turns closed by eos, nothing
#: added for the generation prompt), where a content may also be a list of typed parts: ``{"type": "text", "text":
#: ...}`` renders its text and ``{"type": "image"}`` renders ``<|vision_start|><|image_pad|><|vision_end|>``; the
#: processor then repeats ``<|image_pad|>`` once per image feature.
VLM_CHAT_TEMPLATE: str = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}"
    "{{ '" + VISION_START_TOKEN + IMAGE_TOKEN + VISION_END_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# Bump when the files written by `build_tiny_vlm_checkpoint` change meaning, so that stale caches are rebuilt.
_VLM_CHECKPOINT_FORMAT_VERSION = 1
_VLM_KIND = "llava-clip-qwen2"


def _build_tiny_vlm(
    save_dir: str,
    *,
    seed: int = 0,
    alphabet: str = DEFAULT_ALPHABET,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    initializer_range: float = 0.02,
    vision_hidden_size: int = 64,
    vision_num_layers: int = 1,
    vision_num_heads: int = 4,
    vision_intermediate_size: int | None = None,
    image_size: int = 28,
    patch_size: int = 14,
) -> None:
    """Write the processor and the model of `build_tiny_vlm_checkpoint` to `save_dir` (see there for the arguments)."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )

    for name, value in (
        ("vision_hidden_size", vision_hidden_size),
        ("vision_num_layers", vision_num_layers),
        ("vision_num_heads", vision_num_heads),
        ("image_size", image_size),
        ("patch_size", patch_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if vision_hidden_size % vision_num_heads:
        raise ValueError(
            f"`vision_hidden_size` ({vision_hidden_size}) must be divisible by `vision_num_heads` ({vision_num_heads})."
        )
    if image_size % patch_size:
        raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}).")
    num_image_tokens = (image_size // patch_size) ** 2

    tokenizer = build_char_tokenizer(alphabet=alphabet)
    tokenizer.add_special_tokens({"additional_special_tokens": list(VLM_SPECIAL_TOKENS)})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    # Every image is resized (shortest edge) and centre-cropped to image_size x image_size, then split into patches.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # CLIP prepends a CLS embedding (num_additional_image_tokens=1) that the "default" strategy drops again, so each
    # image expands to exactly num_image_tokens placeholders, one per patch.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=VLM_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )

    # The language model's config (and its argument checks) come from `build_tiny_model`, so both tiny models agree.
    text_model = build_tiny_model(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        seed=seed,
    )
    text_config: Qwen2Config = text_model.config
    del text_model
    special_ids = {
        "pad_token_id": text_config.pad_token_id,
        "eos_token_id": text_config.eos_token_id,
        "bos_token_id": text_config.bos_token_id,
    }
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=vision_intermediate_size if vision_intermediate_size is not None else 2 * vision_hidden_size,
        projection_dim=vision_hidden_size,
        num_hidden_layers=vision_num_layers,
        num_attention_heads=vision_num_heads,
        image_size=image_size,
        patch_size=patch_size,
        initializer_range=initializer_range,
    )
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens,
        vision_feature_layer=-1,  # the last layer: with the default -2 a one-layer tower would feed raw embeddings
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
        **special_ids,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special_ids)
    processor.save_pretrained(save_dir)
    model.save_pretrained(save_dir)


def build_tiny_vlm_checkpoint(save_dir: str | os.PathLike[str], *, seed: int = 0, **kwargs: Any) -> str:
    """Save a tiny randomly initialised vision-language model and its processor to `save_dir`; return the path.

    The model is a LLaVA (`transformers.LlavaForConditionalGeneration`): a one-layer CLIP vision tower, a two-layer
    MLP projector and a tiny Qwen2 language model (the same recipe and defaults as `build_tiny_model`), about 0.2M
    parameters in float32. The processor is a `transformers.LlavaProcessor` with a PIL-only
    `transformers.CLIPImageProcessorPil` (every image is resized and centre-cropped to ``image_size`` pixels, 28 by
    default, and becomes ``(image_size // patch_size) ** 2`` = 4 image tokens) and the character tokenizer of
    `build_char_tokenizer` extended with the Qwen2-VL vision tokens ``<|vision_start|>``, ``<|vision_end|>`` and
    ``<|image_pad|>`` (`VLM_SPECIAL_TOKENS`), whose chat template (`VLM_CHAT_TEMPLATE`) renders string contents and
    lists of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts. ``config.image_token_id`` is the id of
    ``<|image_pad|>``; pad, eos and bos match the tokenizer (``<pad>`` = 0, ``<eos>`` = 1).

    Why LLaVA as well as Qwen2.5-VL (`build_tiny_qwen_vl_checkpoint`, the DIVA-GRPO model family): in transformers 5
    the Qwen2-VL and Qwen2.5-VL processors require a video processor, which needs ``torchvision``; without it
    ``AutoProcessor`` can load neither (transformers#48558), so TRL's default loading fails and only
    `trl_ext.processors.load_processor` loads them. LLaVA's processor has no video part and its image processor has a
    PIL backend, so this checkpoint works with ``AutoProcessor`` and the project's dependencies alone.

    The result loads offline with ``AutoProcessor.from_pretrained(path)`` and
    ``AutoModelForImageTextToText.from_pretrained(path)``, and ``trl.GRPOTrainer(model=path, ...)`` trains it on a
    dataset with a conversational ``prompt`` column and an ``image`` (or ``images``) column of PIL images.

    Cache-friendly like `build_tiny_checkpoint`: if `save_dir` already holds a complete checkpoint stamped with the
    same settings it is returned untouched; otherwise the files are written to a staging directory and moved in with
    atomic renames, stamp last.

    Args:
        save_dir: Directory to write (created if missing).
        seed: Seed of the weight initialisation. Default 0. The same settings always give the same weights.
        **kwargs: Sizes and vocabulary, all optional: ``alphabet`` (see `build_char_tokenizer`); the language model's
            ``hidden_size`` (64), ``num_layers`` (2), ``num_heads`` (4), ``num_kv_heads`` (2),
            ``intermediate_size`` (``4 * hidden_size``), ``max_position_embeddings`` (256, prompt with image tokens
            plus completion) and ``initializer_range`` (0.02, used for the whole model; see `build_tiny_model`); the
            vision tower's ``vision_hidden_size`` (64), ``vision_num_layers`` (1), ``vision_num_heads`` (4),
            ``vision_intermediate_size`` (``2 * vision_hidden_size``), ``image_size`` (28) and ``patch_size`` (14,
            must divide ``image_size``).

    Returns:
        `save_dir` as a string.

    Raises:
        TypeError: For an unknown keyword argument.
        ValueError: For invalid sizes or an invalid alphabet.
    """
    return _cached_vlm_checkpoint(
        "build_tiny_vlm_checkpoint", _build_tiny_vlm, _VLM_KIND, save_dir, seed, kwargs, ".tiny-vlm-staging-"
    )


def _cached_vlm_checkpoint(
    builder_name: str,
    build: Any,
    kind: str,
    save_dir: str | os.PathLike[str],
    seed: int,
    kwargs: dict[str, Any],
    staging_prefix: str,
) -> str:
    """Check `kwargs` against `build`'s keyword arguments, then return `save_dir` if it holds a complete checkpoint
    stamped with the same settings, else write one with ``build(staging_dir, seed=seed, **kwargs)`` in a staging
    directory and move it in with atomic renames, stamp last."""
    import inspect

    save_dir = os.fspath(save_dir)
    accepted = set(inspect.signature(build).parameters) - {"save_dir", "seed"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{builder_name}() got unexpected keyword arguments {unknown}; accepted: {sorted(accepted)}")
    if "alphabet" in kwargs:
        _validate_alphabet(kwargs["alphabet"])
    settings = {
        "format_version": _VLM_CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "seed": seed,
        "options": dict(sorted(kwargs.items())),
    }
    try:
        json.dumps(settings)
    except TypeError as error:
        raise ValueError(f"`{builder_name}` arguments must be JSON-serialisable: {error}") from error
    if _is_complete_checkpoint(save_dir, settings):
        return save_dir

    os.makedirs(save_dir, exist_ok=True)
    staging_dir = tempfile.mkdtemp(prefix=staging_prefix, dir=save_dir)
    try:
        build(staging_dir, seed=seed, **kwargs)
        files = sorted(os.listdir(staging_dir))
        for name in files:
            os.replace(os.path.join(staging_dir, name), os.path.join(save_dir, name))
        stamp_tmp = os.path.join(staging_dir, _STAMP_FILE)
        with open(stamp_tmp, "w", encoding="utf-8") as stamp_file:
            json.dump({"settings": settings, "files": files}, stamp_file, indent=2, sort_keys=True)
        os.replace(stamp_tmp, os.path.join(save_dir, _STAMP_FILE))
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return save_dir


# ------------------------------------------------------------------------------------------------------------------
# A tiny Qwen2-VL / Qwen2.5-VL (DIVA-GRPO's model family)
# ------------------------------------------------------------------------------------------------------------------

#: The video placeholder of the Qwen2-VL family, added to the tiny Qwen-VL vocabulary after `VLM_SPECIAL_TOKENS`: the
#: model's config names it, and a missing token would make it the id of ``<unk>``.
VIDEO_TOKEN: str = "<|video_pad|>"

#: Model families of `build_tiny_qwen_vl_checkpoint`: family -> (model class, config class, processor class).
QWEN_VL_FAMILIES: dict[str, tuple[str, str, str]] = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor"),
}
#: ``(min_pixels, max_pixels)`` of the tiny Qwen-VL image processor: those of the Hub's Qwen2-VL and Qwen2.5-VL
#: Instruct checkpoints (56 * 56 and 12,845,056 pixels, i.e. 4 to 16,384 image tokens per image).
QWEN_VL_PIXEL_LIMITS: tuple[int, int] = (56 * 56, 12_845_056)
_QWEN_VL_KIND = "qwen-vl"


def _build_tiny_qwen_vl(
    save_dir: str,
    *,
    family: str = "qwen2_5_vl",
    seed: int = 0,
    alphabet: str = DEFAULT_ALPHABET,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.02,
    vision_hidden_size: int = 32,
    vision_num_layers: int = 2,
    vision_num_heads: int = 2,
    vision_intermediate_size: int | None = None,
) -> None:
    """Write the processor and the model of `build_tiny_qwen_vl_checkpoint` to `save_dir` (see there)."""
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from trl_ext.processors import image_only_processor_class

    if family not in QWEN_VL_FAMILIES:
        raise ValueError(f"`family` must be one of {sorted(QWEN_VL_FAMILIES)}, got {family!r}.")
    sizes = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "vision_hidden_size": vision_hidden_size,
        "vision_num_layers": vision_num_layers,
        "vision_num_heads": vision_num_heads,
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    for width, heads in (("hidden_size", "num_heads"), ("vision_hidden_size", "vision_num_heads")):
        if sizes[width] % sizes[heads] or (sizes[width] // sizes[heads]) % 4:
            raise ValueError(
                f"`{width}` ({sizes[width]}) must be divisible by `{heads}` ({sizes[heads]}) into heads of a multiple "
                "of 4 dimensions (the rotary embeddings split each head by position axis)."
            )
    if num_heads % num_kv_heads:
        raise ValueError(f"`num_kv_heads` must divide `num_heads` ({num_heads}), got {num_kv_heads}.")
    model_name, config_name, processor_name = QWEN_VL_FAMILIES[family]

    tokenizer = build_char_tokenizer(alphabet=alphabet)
    tokenizer.add_special_tokens({"additional_special_tokens": [*VLM_SPECIAL_TOKENS, VIDEO_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    tokenizer.model_max_length = max_position_embeddings
    # The family's own image processor (patches of 14, 2x2 merged, dynamic resolution) with the Hub checkpoints' pixel
    # limits; PIL-based, and the processor holds no video processor, so neither needs torchvision.
    min_pixels, max_pixels = QWEN_VL_PIXEL_LIMITS
    processor = image_only_processor_class(processor_name)(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer,
        chat_template=VLM_CHAT_TEMPLATE,
    )

    token_ids = {
        key: tokenizer.convert_tokens_to_ids(token)
        for key, token in (
            ("vision_start_token_id", VISION_START_TOKEN),
            ("vision_end_token_id", VISION_END_TOKEN),
            ("image_token_id", IMAGE_TOKEN),
            ("video_token_id", VIDEO_TOKEN),
        )
    }
    special_ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    special_ids["bos_token_id"] = special_ids["eos_token_id"]
    # Multimodal rotary embeddings: each head's rotary half split over (time, height, width) as Qwen's 16/24/24.
    half = hidden_size // num_heads // 2
    temporal = half // 4
    height = (half - temporal) // 2
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size if intermediate_size is not None else 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": initializer_range,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [temporal, height, half - temporal - height],
        },
        **special_ids,
    }
    vision_intermediate = vision_intermediate_size if vision_intermediate_size is not None else 2 * vision_hidden_size
    common_vision = {
        "depth": vision_num_layers,
        "num_heads": vision_num_heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "initializer_range": initializer_range,
    }
    if family == "qwen2_vl":
        vision_config = {
            **common_vision,
            "embed_dim": vision_hidden_size,
            "mlp_ratio": vision_intermediate // vision_hidden_size,
            "hidden_size": hidden_size,  # the merger's output: the language model's width
        }
    else:
        vision_config = {
            **common_vision,
            "hidden_size": vision_hidden_size,
            "intermediate_size": vision_intermediate,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [vision_num_layers - 1],  # windowed attention before, full attention last
        }
    config = getattr(transformers, config_name)(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=True, **token_ids
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(config)
    model.generation_config = GenerationConfig(**special_ids)
    processor.save_pretrained(save_dir)
    with progress_bars_disabled():
        model.save_pretrained(save_dir)


def build_tiny_qwen_vl_checkpoint(
    save_dir: str | os.PathLike[str], *, family: str = "qwen2_5_vl", seed: int = 0, **kwargs: Any
) -> str:
    """Save a tiny randomly initialised Qwen2.5-VL (``family="qwen2_5_vl"``) or Qwen2-VL (``"qwen2_vl"``) and its
    processor to `save_dir`; return the path.

    The model is the family's own (`transformers.Qwen2_5_VLForConditionalGeneration` /
    `Qwen2VLForConditionalGeneration`): a vision tower of 14-pixel patches merged 2x2 (Qwen2.5-VL: windowed
    attention, full attention in the last layer) and a tiny language model with multimodal rotary embeddings, about
    0.15M parameters in float32. The processor is the family's with transformers' PIL image processor
    (`transformers.Qwen2VLImageProcessorPil`, dynamic resolution: each image is resized to multiples of 28 pixels
    within the processor's ``min_pixels`` / ``max_pixels``, those of the Hub checkpoints (`QWEN_VL_PIXEL_LIMITS`), and
    becomes ``image_grid_thw = (1, H / 14, W / 14)`` patches and ``H * W / 28**2`` image tokens) and no video
    processor, so that neither needs torchvision; it saves as the family's processor class. The
    tokenizer is `build_char_tokenizer`'s plus `VLM_SPECIAL_TOKENS` and ``<|video_pad|>``, with `VLM_CHAT_TEMPLATE`.

    Load it with `trl_ext.processors.load_processor(path)` (``AutoProcessor`` without torchvision cannot: it builds a
    video processor) and ``AutoModelForImageTextToText.from_pretrained(path)``; ``BaseGRPOTrainer`` and every trl-ext
    trainer load it from the path themselves when ``max_pixels`` or ``min_pixels`` is set in the config (otherwise TRL
    uses ``AutoProcessor``: pass ``processing_class=load_processor(path)``).

    Cached like `build_tiny_vlm_checkpoint` (same settings: the directory is returned untouched).

    Args:
        save_dir: Directory to write (created if missing).
        family: ``"qwen2_5_vl"`` (default, the DIVA-GRPO paper's family) or ``"qwen2_vl"``.
        seed: Seed of the weight initialisation. Default 0.
        **kwargs: Sizes and vocabulary, all optional: ``alphabet``; the language model's ``hidden_size`` (64),
            ``num_layers`` (2), ``num_heads`` (4), ``num_kv_heads`` (2), ``intermediate_size``
            (``2 * hidden_size``), ``max_position_embeddings`` (2048) and ``initializer_range`` (0.02); the vision
            tower's ``vision_hidden_size`` (32), ``vision_num_layers`` (2), ``vision_num_heads`` (2) and
            ``vision_intermediate_size`` (``2 * vision_hidden_size``). Heads must have a multiple of 4 dimensions.

    Raises:
        TypeError: For an unknown keyword argument.
        ValueError: For an unknown family, invalid sizes or an invalid alphabet.
    """
    if family not in QWEN_VL_FAMILIES:
        raise ValueError(f"`family` must be one of {sorted(QWEN_VL_FAMILIES)}, got {family!r}.")
    return _cached_vlm_checkpoint(
        "build_tiny_qwen_vl_checkpoint",
        _build_tiny_qwen_vl,
        _QWEN_VL_KIND,
        save_dir,
        seed,
        {"family": family, **kwargs},
        ".tiny-qwen-vl-staging-",
    )
