"""Processors of vision-language models: image pixel limits (``max_pixels`` / ``min_pixels``), and the Qwen2-VL
family without torchvision.

Qwen2-VL and Qwen2.5-VL (DIVA-GRPO's model family) resize every image dynamically: to a multiple of
``patch_size * merge_size`` (28) pixels per side, with at most ``max_pixels`` and at least ``min_pixels`` pixels,
so an image becomes ``image_grid_thw = (1, H / 14, W / 14)`` patches and ``H * W / 28**2`` image tokens. The limit is
a setting of the image processor, which TRL builds with ``AutoProcessor.from_pretrained(model)`` and no way to pass
it. :func:`load_processor` builds it with the limits (``BaseGRPOConfig.max_pixels`` / ``min_pixels`` reach it that
way); :func:`set_pixel_limits` applies them to a processor you built.

In transformers 5 the Qwen2-VL and Qwen2.5-VL processors also hold a video processor, which needs torchvision; without
it ``AutoProcessor`` can load neither. :func:`load_processor` then builds the processor without its video part
(:func:`image_only_processor_class`): images work as with the full processor (same tokens, same ``pixel_values`` and
``image_grid_thw``, from transformers' PIL image processor), videos are refused.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

__all__ = [
    "IMAGE_ONLY_PROCESSOR_FAMILIES",
    "check_pixel_limits",
    "image_only_processor_class",
    "load_processor",
    "pixel_limits",
    "set_pixel_limits",
]

#: model_type -> processor class, for the processors that :func:`image_only_processor_class` can build without a video
#: processor.
IMAGE_ONLY_PROCESSOR_FAMILIES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
}


@functools.cache
def image_only_processor_class(name: str) -> type:
    """The processor class `name` (``"Qwen2VLProcessor"`` or ``"Qwen2_5_VLProcessor"``) without its video processor.

    Its sub-processors are the image processor and the tokenizer only, so it is built and loaded
    (``from_pretrained``) without torchvision; everything about images is the parent class's. It saves as the parent
    class (``processor_class`` in ``processor_config.json``), so what it writes is an ordinary checkpoint of that
    family. Passing ``videos`` raises ``ValueError``.
    """
    import transformers
    from transformers.processing_utils import ProcessorMixin

    if name not in IMAGE_ONLY_PROCESSOR_FAMILIES.values():
        raise ValueError(
            f"no image-only variant of {name!r}; supported: {sorted(IMAGE_ONLY_PROCESSOR_FAMILIES.values())}"
        )
    base = getattr(transformers, name)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # What the parent's __init__ sets before it hands its sub-processors to ProcessorMixin (the video token is
        # still named: the model's config and chat templates refer to it).
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(
                f"this {name} was built without a video processor (trl_ext.processors.image_only_processor_class); "
                "it takes images only"
            )
        return base.__call__(self, images=images, text=text, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = base.to_dict(self)
        output["processor_class"] = name  # an ordinary checkpoint of the family
        return output

    return type(
        f"ImageOnly{name}",
        (base,),
        {
            "__init__": __init__,
            "__call__": __call__,
            "to_dict": to_dict,
            "__module__": __name__,
            "__doc__": f"`transformers.{name}` without its video processor (see `image_only_processor_class`).",
        },
    )


def __getattr__(name: str) -> type:
    """``ImageOnlyQwen2VLProcessor`` / ``ImageOnlyQwen2_5_VLProcessor``: the classes are built on first use, and found
    here by name (pickle looks them up so)."""
    prefix = "ImageOnly"
    if name.startswith(prefix) and name[len(prefix) :] in IMAGE_ONLY_PROCESSOR_FAMILIES.values():
        return image_only_processor_class(name[len(prefix) :])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_pixel_limits(max_pixels: Any, min_pixels: Any) -> None:
    """Raise ``ValueError`` unless each limit is ``None`` or a positive integer and ``min_pixels <= max_pixels``."""
    for option, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ValueError(f"{option} must be a positive integer (pixels per image), got {value!r}")
    if max_pixels is not None and min_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")


def _has_pixel_limits(image_processor: Any) -> bool:
    """Whether the image processor resizes to a pixel budget (takes ``max_pixels`` / ``min_pixels``)."""
    valid = getattr(type(image_processor), "valid_kwargs", None)
    return "max_pixels" in getattr(valid, "__annotations__", {})


def pixel_limits(processor: Any) -> tuple[int, int] | None:
    """``(min_pixels, max_pixels)`` of a processor's (or an image processor's) dynamic resizing, or ``None`` for one
    without pixel limits (a fixed-size image processor such as CLIP's, or a tokenizer)."""
    image_processor = getattr(processor, "image_processor", processor)
    if not _has_pixel_limits(image_processor):
        return None
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return int(get("shortest_edge")), int(get("longest_edge"))


def _refuse_fixed_size(processor: Any, max_pixels: int | None, min_pixels: int | None) -> None:
    if max_pixels is None and min_pixels is None:
        return
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not _has_pixel_limits(image_processor):
        what = type(image_processor if image_processor is not None else processor).__name__
        raise ValueError(
            f"max_pixels / min_pixels: the model's processor ({what}) has no pixel limits; they apply to image "
            "processors that resize images dynamically (Qwen2-VL, Qwen2.5-VL). Leave them unset for this model."
        )


def set_pixel_limits(processor: Any, *, max_pixels: int | None = None, min_pixels: int | None = None) -> Any:
    """Set the image processor's ``max_pixels`` / ``min_pixels`` (``None`` keeps the current value); returns
    `processor`, changed in place.

    Raises ``ValueError`` for invalid limits or a processor whose images are not resized to a pixel budget.
    """
    check_pixel_limits(max_pixels, min_pixels)
    _refuse_fixed_size(processor, max_pixels, min_pixels)
    if max_pixels is None and min_pixels is None:
        return processor
    image_processor = processor.image_processor
    current_min, current_max = pixel_limits(image_processor)
    new_min = current_min if min_pixels is None else int(min_pixels)
    new_max = current_max if max_pixels is None else int(max_pixels)
    check_pixel_limits(new_max, new_min)
    # Rebuilt by its class from its own settings, so that the class's way of storing the limits is kept.
    rebuilt = type(image_processor).from_dict(image_processor.to_dict(), max_pixels=new_max, min_pixels=new_min)
    processor.image_processor = rebuilt
    return processor


def load_processor(
    model_name_or_path: str,
    *,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The processor that ``trl.GRPOTrainer`` loads for `model_name_or_path` (``AutoProcessor``, left padding and
    truncation), with the image processor's ``max_pixels`` / ``min_pixels`` set when given.

    For a Qwen2-VL or Qwen2.5-VL model on a machine without torchvision, the processor is built without its video
    processor (:func:`image_only_processor_class`), since ``AutoProcessor`` cannot load it there.

    Raises:
        ValueError: invalid limits, or limits for a model whose image processor has none (e.g. LLaVA's CLIP).
    """
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_torchvision_available

    check_pixel_limits(max_pixels, min_pixels)
    processor_cls: Any = AutoProcessor
    if not is_torchvision_available():
        config = AutoConfig.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
        model_type = getattr(config, "model_type", None)
        if model_type in IMAGE_ONLY_PROCESSOR_FAMILIES:
            processor_cls = image_only_processor_class(IMAGE_ONLY_PROCESSOR_FAMILIES[model_type])
    # The limits are not passed to from_pretrained: the processor would keep them among its tokenizer's settings and
    # pass them with every call, a route transformers has deprecated. The image processor is rebuilt with them.
    processor = processor_cls.from_pretrained(
        model_name_or_path,
        revision=revision,
        trust_remote_code=trust_remote_code,
        truncation_side="left",
        padding_side="left",
    )
    return set_pixel_limits(processor, max_pixels=max_pixels, min_pixels=min_pixels)
