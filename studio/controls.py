"""One Gradio control per request field (magihuman.fields): label, help, default, range and choices come
from the field's declaration; only the look (lines, height, sources) is decided here."""

from __future__ import annotations

import gradio as gr

from magihuman.fields import Field

PROMPT_PLACEHOLDER = (
    "English description of the person and scene, then a Dialogue: block and a Background Sound: block. Use the "
    "dialogue builder below to write one."
)
ELEM_IDS = {"audio": "own-audio"}  # the browser tests' stable hooks; the others are the field names
RANDOM_SEED_ID = "random-seed"
READ_BY_HELPERS = {"seconds"}  # number fields other events read as well (0 there means empty)


def elem_id(f: Field) -> str:
    return ELEM_IDS.get(f.name, f.name.replace("_", "-"))


def control(f: Field) -> gr.components.Component:
    """The control for `f`; a number field whose default is None is an empty number box, so the UI, the API and
    the CLI share that default."""
    common = {"label": f.label, "elem_id": elem_id(f)}
    info = {"info": f.help} if f.advanced else {}
    if f.name == "prompt":
        return gr.Textbox(lines=8, max_length=int(f.maximum), placeholder=PROMPT_PLACEHOLDER, **common)
    if f.kind == "text":
        return gr.Textbox(lines=2, max_length=int(f.maximum), placeholder=f.help.split("; ")[-1], **common, **info)
    if f.kind == "image":
        image = gr.Image(type="filepath", sources=["upload", "clipboard"], height=260, **common)
        return upload_as_is(image)
    if f.kind == "audio":
        return gr.Audio(type="filepath", sources=["upload", "microphone"], **common)
    if f.choices:
        return gr.Radio([(label, value) for value, label in f.choices], value=f.default, **common, **info)
    if f.default is None:  # the page shows 0 for "empty" (see empty_values_js)
        if f.advanced and (f.minimum or 0) > 0:
            info = {"info": f.help.replace("empty: ", "0 or empty: ")}
        # Other events read the duration's 0 for "empty" without empty_values_js; the engine checks the range.
        minimum = 0 if f.name in READ_BY_HELPERS else f.minimum
        number = gr.Number(value=None, minimum=minimum, maximum=f.maximum, step=f.step, **common, **info)
    else:
        number = gr.Slider(f.minimum, f.maximum, value=f.default, step=f.step, **common, **info)
    return _typed(number, f)


def _typed(number: gr.components.Component, f: Field) -> gr.components.Component:
    """The field's own type and range for API and MCP clients, without Gradio's precision rounding (which would
    turn 1.5 steps into 2 instead of refusing them)."""
    schema = {"type": "integer" if f.kind == "int" else "number", "minimum": f.minimum, "maximum": f.maximum}
    number.api_info = lambda: dict(schema)
    return number


def empty_values_js(fields: tuple[Field, ...]) -> str:
    """An event's `js`: Gradio's number box sends 0 for empty, so fields whose default is None send None instead
    (the seed when "Random seed" is ticked, a 0 below the minimum). API calls never run it."""
    zero_means_empty = [i for i, f in enumerate(fields) if f.default is None and (f.minimum or 0) > 0]
    seed = next(i for i, f in enumerate(fields) if f.name == "seed")
    return (
        "(...values) => {"
        f" const random = document.querySelector('#{RANDOM_SEED_ID} input');"
        f" if (!random || random.checked) values[{seed}] = null;"
        f" for (const i of {zero_means_empty}) if (values[i] === 0) values[i] = null;"
        f" return values.slice(0, {len(fields)}); }}"
    )


def upload_as_is(image: gr.Image) -> gr.Image:
    """Hand the handler the upload itself for `load_portrait`: Gradio's own preprocessing fails on bad files with
    a message naming the server path, clips 16-bit PNGs and blackens transparency. (Not a subclass: Gradio
    writes a `.pyi` stub beside any module defining a component class.)"""
    convert = image.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path  # Gradio has already checked that this is one of its own uploads
        return convert(payload)

    image.preprocess = preprocess
    return image
