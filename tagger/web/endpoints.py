"""The public API, which is also the app's MCP tool list: ``/tag``, ``/tag_batch``, ``/pca``,
``/heatmap``, ``/similarity`` and ``/similarity_batch``. Each is a typed function published with
``gr.api``: Gradio shows its signature and docstring on "Use via API", in ``Client.view_api`` and in
the MCP tool list. ``api_endpoint`` puts the ``TagOptions`` fields (order, types, defaults, help) in
place of an ``options`` parameter. Files arrive as Gradio received them (``inputs.received_path``);
files returned are written to Gradio's cache."""

from __future__ import annotations

import functools
import inspect
import re
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

import gradio as gr
import numpy as np
from gradio import FileData
from gradio_client import handle_file
from PIL import Image

from tagger.engine.resolution import MIN_SIZE
from tagger.errors import SelectionError
from tagger.features.pca import DEFAULT_COLOURS, pca_images
from tagger.features.relevance import DEFAULT_LAYERS_FROM_END
from tagger.features.similarity import PAIRS_PER_CALL
from tagger.tags.formats import api_response
from tagger.tags.options import OPTION_FIELDS, OPTION_NAMES, OPTION_TYPES, TagOptions, option_info
from tagger.tags.selection import select_tags
from tagger.web import service
from tagger.web.context import HEAVY_QUEUE, TAG_QUEUE, AppContext, user_errors
from tagger.web.gradio_compat import (
    ImageData,
    api_components_as,
    components_being_built,
    get_function_description,
    get_upload_folder,
    json_schema_to_python_type,
    set_api_info,
)
from tagger.web.inputs import SafeApi, received_path

IMAGE_HELP = (
    "The image, any format Pillow reads (PNG, JPEG, WebP, GIF's first frame, ...): an upload "
    "(gradio_client: handle_file(path)) or an http(s) URL."
)
IMAGE_SCHEMA = {**ImageData.model_json_schema(), "additional_description": IMAGE_HELP}
# Filled into the endpoints' docstrings; "{options}" (a line of its own) by the options' help.
DOC_PARTS = {
    "{image}": IMAGE_HELP,
    "{batch_limits}": (
        f"at most {service.LIMITS.max_files:,} images, {service.LIMITS.max_upload_bytes // 2**20} MiB uploaded and "
        f"{service.LIMITS.max_total_bytes // 2**20} MiB unpacked per request"
    ),
    "{pairs_per_call}": str(PAIRS_PER_CALL),
}
# What "Use via API" suggests: the app's own examples/ on a Space; elsewhere the same photos
# from scikit-image's sample data, where examples/ has them from.
SPACE_EXAMPLE = "https://huggingface.co/spaces/{space_id}/resolve/main/examples/{name}.jpg"
SKIMAGE_EXAMPLE = "https://raw.githubusercontent.com/scikit-image/scikit-image/main/skimage/data/{name}.png"
SKIMAGE_NAMES = {"cat": "chelsea", "coffee": "coffee"}


class Table(TypedDict):
    """A results table, as Gradio's Dataframe sends it."""

    headers: list[str]
    data: list[list[str | int]]
    metadata: None


def option_parameter(option: Field) -> inspect.Parameter:
    """An option as an API parameter: its declared type (a choice: its literal values) and default."""
    choices = tuple(value for _, value in option_info(option).choices)
    annotation = Literal[choices] if choices else OPTION_TYPES[option.name]
    return inspect.Parameter(
        option.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option.default, annotation=annotation
    )


OPTION_PARAMETERS = tuple(option_parameter(f) for f in OPTION_FIELDS)
OPTION_DOCS = tuple(f"{f.name}: {option_info(f).help}" for f in OPTION_FIELDS)


def api_endpoint(fn: Callable[..., Any], parts: dict[str, str] | None = None) -> Callable[..., Any]:
    """``fn`` as a public endpoint: ``options: TagOptions`` becomes one parameter per option (left out or
    None: the default) and a ``{options}`` docstring line one ``name: help`` line per option; ``parts``
    (and ``DOC_PARTS``) fill docstring placeholders. Arguments are type-checked before ``fn`` runs (a raw
    API call can send anything); documented errors reach the client as their sentence (``user_errors``).
    The signature holds types rather than strings: gr.api reads the result types from it."""
    signature = inspect.signature(fn, eval_str=True)
    takes_options = "options" in signature.parameters
    own = list(signature.parameters.values())
    at = own.index(signature.parameters["options"]) if takes_options else len(own)
    public = signature.replace(parameters=[*own[:at], *(OPTION_PARAMETERS if takes_options else ()), *own[at + 1 :]])

    @functools.wraps(fn)
    def endpoint(*args: object, **kwargs: object) -> Any:
        arguments = public.bind(*args, **kwargs).arguments
        for name, value in arguments.items():
            annotation = public.parameters[name].annotation
            if value is not None and not is_instance(value, annotation):
                raise SelectionError(f"{name} must be {type_name(annotation)}, not {value!r:.60}.")
        if takes_options:
            values = {name: arguments.pop(name) for name in OPTION_NAMES if name in arguments}
            arguments["options"] = TagOptions.from_values(**values)
        return fn(**arguments)

    typing.cast(Any, endpoint).__signature__ = public  # read by inspect.signature
    endpoint.__annotations__ = {p.name: p.annotation for p in public.parameters.values()}
    endpoint.__annotations__["return"] = public.return_annotation
    doc = re.sub(
        r"^([ \t]*)\{options\}$",
        lambda m: "\n".join(m.group(1) + line for line in OPTION_DOCS),
        fn.__doc__ or "",
        flags=re.MULTILINE,
    )
    for placeholder, text in {**DOC_PARTS, **(parts or {})}.items():
        doc = doc.replace(placeholder, text)
    endpoint.__doc__ = doc
    return user_errors(endpoint)


def is_instance(value: object, annotation: object) -> bool:
    """Whether a JSON value fits a parameter's type (any number fits ``int``: see below). Files and
    Literal values are left to the endpoint (``received_path``, ``TagOptions``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        # Any number passes for int: whether it is whole (and not NaN) is checked where it is used,
        # by the option's or the endpoint's own validation, with a sentence naming the rule.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(is_instance(item, args[0]) for item in value)
    if origin is not Literal and args:  # a union
        return any(is_instance(value, arg) for arg in args)
    return True


def type_name(annotation: object) -> str:
    """A parameter's type for people: ``file``, ``float``, ``'a' or 'b'``, ``str or list of str``."""
    if annotation in (FileData, ImageData):
        return "file"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if args:  # a union
        return " or ".join(type_name(arg) for arg in args)
    return getattr(annotation, "__name__", str(annotation))


def png_files(**images: np.ndarray) -> tuple[FileData, ...]:
    """Lossless PNGs (WebP, Gradio's default, would smear the maps' flat colour fields) in Gradio's cache."""
    folder = Path(tempfile.mkdtemp(prefix="result-", dir=get_upload_folder()))
    files = []
    for name, array in images.items():
        path = folder / f"{name}.png"
        Image.fromarray(array).save(path)
        files.append(FileData(path=str(path), orig_name=path.name, mime_type="image/png"))
    return tuple(files)


def file_data(path: Path | None) -> FileData:
    return FileData(path=str(path), orig_name=Path(str(path)).name)


@dataclass
class Endpoint:
    """An endpoint function (``api_endpoint``) and how it is published."""

    fn: Callable[..., Any]
    returns: tuple[str, ...]  # the results' labels
    examples: dict[str, Any] = field(default_factory=dict)  # suggested on "Use via API"
    concurrency_id: str = HEAVY_QUEUE

    @property
    def name(self) -> str:
        return self.fn.__name__


def build_endpoints(ctx: AppContext) -> list[Endpoint]:
    """The endpoint functions, in the order of the API docs; ``publish`` registers them."""
    num_layers = ctx.tagger.model.config.num_layers
    size = ctx.default_size
    max_size_help = (
        f"The long edge the model sees, in pixels (larger is slower; the model was trained at 512): "
        f"rounded to a multiple of 16 and kept within {MIN_SIZE} and this server's cap of {ctx.size_cap}. "
        f"Default here: {ctx.default_size}."
    )
    api_endpoint_here = functools.partial(api_endpoint, parts={"{max_size}": max_size_help})

    @api_endpoint_here
    def tag(image: ImageData, options: TagOptions, max_size: int = size) -> dict:
        """Tag one image: its tags with scores, best first and grouped by category, and a tag string
        ready to paste.

        Args:
            image: {image}
            {options}
            max_size: {max_size}
        Returns:
            JSON: tags [{tag, score, category}] best first
            categories [{id, name, color, tags}] in display order
            count and tag_string
        """
        tags = select_tags(ctx.scores_for(received_path(image), max_size), ctx.vocab, options.selection)
        return api_response(tags, options.tag_string(tags, ctx.vocab))

    @api_endpoint_here
    def tag_batch(
        files: list[FileData], options: TagOptions, max_size: int = size
    ) -> tuple[Table, FileData, FileData, str]:
        """Tag many images at once and get their captions: kohya-style .txt files (same folders and
        names as the images) and a JSONL file. Limits: {batch_limits}.

        Args:
            files: Image files and/or zip archives of them; a zip's sub-folders become the images' concepts.
            {options}
            max_size: {max_size}
        Returns:
            the results table (file, concept, number of tags, top tags)
            a zip of the captions
            a JSONL file, one line per image (sha256, filename, concept, tags or error)
            a summary line
        """
        paths = [received_path(f) for f in files or []]
        output = service.tag_files(ctx, [p for p in paths if p is not None], options, gr.Progress(), max_size)
        table = Table(
            headers=service.TABLE_HEADERS, data=[service.result_row(r) for r in output.results], metadata=None
        )
        return table, file_data(output.captions_zip), file_data(output.jsonl), service.summary_markdown(output)

    @api_endpoint_here
    def pca(
        image: ImageData,
        color_1: str = DEFAULT_COLOURS[0],
        color_2: str = DEFAULT_COLOURS[1],
        color_3: str = DEFAULT_COLOURS[2],
        alpha: float = 0.5,
        upscale: Literal["nearest", "bilinear"] = "nearest",
        max_size: int = size,
    ) -> tuple[FileData, FileData, FileData]:
        """False colour of the image's final patch features: the first three principal components as
        red, green and blue, at the size the model sees (multiples of 16).

        Args:
            image: {image}
            color_1: Colour (#rrggbb) of the first component in the colour blend.
            color_2: Colour (#rrggbb) of the second component in the colour blend.
            color_3: Colour (#rrggbb) of the third component in the colour blend.
            alpha: Opacity of the PCA map over the image, 0 to 1.
            upscale: From patches to pixels: nearest (square patches) or bilinear (smooth).
            max_size: {max_size}
        Returns:
            the PCA map (PNG)
            the PCA map over the image (PNG)
            the blend of color_1..3 weighted by components 1-3 (PNG)
        """
        maps = service.run_pca(ctx, received_path(image), max_size)
        pca_map, overlay, blend = pca_images(maps, (color_1, color_2, color_3), alpha, upscale)
        pca_png, overlay_png, blend_png = png_files(pca=pca_map, overlay=overlay, color_blend=blend)
        return pca_png, overlay_png, blend_png

    @api_endpoint_here
    def heatmap(
        image: ImageData,
        tag: str,
        layers_from_end: int = min(DEFAULT_LAYERS_FROM_END, num_layers),
        alpha: float = 0.5,
        upscale: Literal["nearest", "bilinear"] = "bilinear",
        max_size: int = size,
    ) -> tuple[FileData, FileData, dict]:
        """Where a tag's evidence lies in the image: gradient times activation of the tag's logit on
        the patch tokens, at the input of a block.

        Args:
            image: {image}
            tag: Any tag of the vocabulary (case, '_' for space and \\( escapes are ignored).
            layers_from_end: The block, counted from the end: 2 up to the model's number of blocks.
            alpha: Opacity of the heatmap over the image, 0 to 1.
            upscale: From patches to pixels: nearest (square patches) or bilinear (smooth).
            max_size: {max_size}
        Returns:
            the heatmap over the image (PNG)
            the heatmap alone, inferno colours (PNG)
            JSON with the tag, its probability, the block and the [h, w] relevance grid in [0, 1]
        """
        path = received_path(image)
        over, heat, info = service.run_heatmap(ctx, path, tag, layers_from_end, alpha, upscale, max_size)
        over_png, heat_png = png_files(overlay=over, heatmap=heat)
        return over_png, heat_png, info

    @api_endpoint_here
    def similarity(image_a: ImageData, image_b: ImageData, max_size: int = size) -> float:
        """Cosine similarity of two images' descriptors (CLS and register tokens after the final norm,
        L2-normalised): 1.0 for the same image, lower the more they differ.

        Args:
            image_a: {image}
            image_b: The image to compare it with, the same way.
            max_size: {max_size}
        Returns:
            The cosine similarity, -1 to 1.
        """
        return service.compare(ctx, received_path(image_a), received_path(image_b), max_size)

    @api_endpoint_here
    def similarity_batch(archive: FileData, max_size: int = size) -> dict:
        """Similarity of many pairs: a zip with two top-level folders, files paired by name without
        extension (a/cat.png with b/cat.jpg). The model runs once per {pairs_per_call} pairs.

        Args:
            archive: The zip: an upload (gradio_client: handle_file(path)) or an http(s) URL.
            max_size: {max_size}
        Returns:
            JSON: pairs [{stem, a, b, similarity}]
            summary {pairs, mean, min, max}
            unmatched, ignored and errors [{file, error}]
        """
        return service.score_zip(ctx, received_path(archive), max_size=max_size).to_json()

    cat, coffee = (example_image(ctx, name) for name in ("cat", "coffee"))
    found = ctx.vocab.find("cat")
    example_tag = ctx.vocab.tags[found[0] if found else 0]
    pairs_zip = FileData(path="pairs.zip", url="pairs.zip", orig_name="pairs.zip").model_dump()  # yours
    return [
        Endpoint(tag, ("result",), {"image": cat}, concurrency_id=TAG_QUEUE),
        Endpoint(tag_batch, ("Results", "Captions (.zip)", "Tags (.jsonl)", "Summary"), {"files": [cat, coffee]}),
        Endpoint(pca, ("pca", "overlay", "color_blend"), {"image": cat}),
        Endpoint(heatmap, ("overlay", "heatmap", "info"), {"image": cat, "tag": example_tag}),
        Endpoint(similarity, ("similarity",), {"image_a": cat, "image_b": coffee}),
        Endpoint(similarity_batch, ("result",), {"archive": pairs_zip}),
    ]


def example_image(ctx: AppContext, name: str) -> dict:
    if ctx.space_id:
        return handle_file(SPACE_EXAMPLE.format(space_id=ctx.space_id, name=name))
    return handle_file(SKIMAGE_EXAMPLE.format(name=SKIMAGE_NAMES[name]))


def publish(endpoints: Sequence[Endpoint]) -> None:
    """``gr.api`` for each endpoint (in a ``gr.Blocks``): ``SafeApi`` parameters with labels, types, examples."""
    components = components_being_built()
    for endpoint in endpoints:
        with api_components_as(SafeApi):
            dependency = gr.api(endpoint.fn, api_name=endpoint.name, concurrency_id=endpoint.concurrency_id)
        _, meanings, _ = get_function_description(endpoint.fn)
        parameters = inspect.signature(endpoint.fn).parameters.values()
        for block_id, parameter in zip(dependency["inputs"], parameters, strict=True):
            block = components[block_id]
            block.label = parameter.name
            block.example = endpoint.examples.get(parameter.name)
            if parameter.annotation is ImageData:  # Gradio would type it as a generic object
                set_api_info(block, IMAGE_SCHEMA)
            elif "filepath" in json_schema_to_python_type(block.api_info()):
                # What view_api shows for a file (Gradio: FileData's class docstring).
                set_api_info(block, {**block.api_info(), "additional_description": meanings[parameter.name]})
        for block_id, label in zip(dependency["outputs"], endpoint.returns, strict=True):
            components[block_id].label = label
