"""Tool calls from the embedded model: how tools and calls are written into its prompt, and the
llama.cpp grammars that make what it writes a valid call.

SmolLM2-135M was not trained to call tools: asked "What's the weather in Paris?" with a weather tool
described in the prompt it wrote a call 0 times in 6 questions. So the service writes the call's
frame itself and lets the model fill in only what it must choose, each step constrained by a grammar:

1. ``auto``: a choice between ``<tool_call>`` and ``Answer:`` (one or two tokens, the prompt is
   already evaluated). Measured on 16 requests (8 that needed one of 3 tools, 8 that did not): it
   called on 2 of the 8 and on 1 of the 8 others, 9 of 16 right; the alternatives were no better
   (a choice between the tool names and "none": 9/16, calling on 15 of 16; a separate yes/no
   question: 8/16, always yes). A model this small barely decides; this choice errs towards a spoken
   answer, the cheaper mistake in a voice chat. Under the service's voice prompt it called on none of
   24 (bench/results/tools.md): with this model, a caller that knows a tool is wanted says so with
   ``required`` or a named function, which skip this step.
2. Several tools and no name given: the name, as a choice among the tool names (right for 4 of 4
   requests that needed a tool).
3. The arguments, under a grammar built from the tool's JSON Schema
   (``LlamaGrammar.from_json_schema``), streamed piece by piece: they always parse and fit the
   schema's structure (types, required properties, enums); values are the model's guesses ("Paris"
   for the weather in Paris). A schema the converter cannot follow gets a looser grammar
   (``args_grammars``).

The model writes one call per reply (no parallel calls). The tools are described in the prompt in
the common form (Hermes, Qwen): JSON inside ``<tools>``, a call as ``{"name", "arguments"}`` inside
``<tool_call>``; results are told in the user's turn (``prompt_messages``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from llama_cpp import LlamaGrammar
from llama_cpp.llama_grammar import JSON_GBNF

from ..tools import tool_names

log = logging.getLogger("rvchat.llm.local")

CALL_OPEN = "<tool_call>"
ANSWER = "Answer:"
# The auto choice: a call or a plain answer, decided by the first token(s).
DECIDE_GBNF = f'root ::= "{CALL_OPEN}" | "{ANSWER}"'

TOOLS_PROMPT = (
    "You can call functions. The functions are listed in <tools></tools>:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer only with a JSON object in <tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <arguments-object>}}\n</tool_call>'
)


def call_head(name: str | None = None) -> str:
    """The start of a call up to where the model writes: the name, or (given the name) the arguments."""
    head = f'{CALL_OPEN}\n{{"name": '
    return head if name is None else f'{head}{json.dumps(name)}, "arguments": '


def prompt_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI-shaped messages as plain role/content messages for the chat template, with the tools
    described in the system message.

    A call and its result are told as part of the user's turn: "<question>\n\nget_weather returned:
    <result>". Measured on 3 weather questions with their results: told that way the model used the
    result 3 times (one with an invented detail); with the call written out as an assistant turn and
    the result in ``<tool_response>`` tags as the next user turn, 2 times (the third repeated the
    tags); with the result after a written call in any form, it wrote the call again instead of
    answering (3 of 3 in one form).
    """
    names = tool_names(messages)
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "tool":
            told = f"{names.get(m.get('tool_call_id', ''), 'the tool')} returned: {content}"
            if out and out[-1]["role"] == "user":
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n\n{told}"}
            else:
                out.append({"role": "user", "content": told})
        elif m.get("tool_calls") and not content:
            continue  # the call itself is told with its result
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        listed = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t["function"]) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listed}"}
        else:
            out.insert(0, {"role": "system", "content": f"You are a helpful assistant.\n\n{listed}"})
    return out


def name_grammar(names: list[str]) -> LlamaGrammar:
    choices = " | ".join(_gbnf_literal(json.dumps(n)) for n in names)
    return LlamaGrammar.from_string(f"root ::= {choices}", verbose=False)


def decide_grammar() -> LlamaGrammar:
    return LlamaGrammar.from_string(DECIDE_GBNF, verbose=False)


def args_grammars(parameters: dict[str, Any] | None) -> list[LlamaGrammar]:
    """Grammars for a tool's arguments object, best first; none when it takes no arguments (they are
    ``{}``).

    First the whole schema (``LlamaGrammar.from_json_schema`` covers types, properties, required,
    enum, const, anyOf/oneOf, arrays, formats, lengths and local $refs); then, where the converter or
    llama.cpp cannot follow it (a ``pattern`` without ^...$, ``not``, a $ref that only refers to
    itself), the same properties with only their types and enums (strings, and values of no usable type,
    as strings of at most ``LOOSE_STRING_CHARS``); last any JSON object. With any
    object the model copied the schema itself into the arguments; with the loosened one it kept the
    tool's property names.
    """
    params = parameters or {}
    if not params.get("properties") and not params.get("additionalProperties") \
            and not any(k in params for k in ("anyOf", "oneOf", "allOf", "$ref", "patternProperties")):
        return []
    out = []
    for schema in (params, _loosened(params)):
        try:
            out.append(LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False))
        except Exception as exc:  # the converter raises plain Exceptions / ValueErrors on what it lacks
            log.info("no grammar from this tool's schema (%s)", exc)
    return [*out, any_object_grammar()]


LOOSE_STRING_CHARS = 48


def _loosened(params: dict[str, Any]) -> dict[str, Any]:
    def simple(sub: Any) -> dict[str, Any]:
        # A value with no type it can keep (a $ref to itself, a list of types) becomes a short string, and
        # strings are short: left free, the model wrote the schema's own "$ref" path on and on
        # ("#/$defs/x/Paris/2017/2018/...") until max_tokens cut the arguments mid-string.
        kept = {k: sub[k] for k in ("type", "enum") if k in sub} if isinstance(sub, dict) else {}
        kind = kept.get("type", "string")
        if isinstance(kind, str) and ("enum" in kept or kind != "string"):
            return kept
        return {"type": "string", "maxLength": LOOSE_STRING_CHARS}

    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = [r for r in params.get("required") or [] if r in props]
    return {"type": "object", "properties": {k: simple(v) for k, v in props.items()}, "required": required}


def any_object_grammar() -> LlamaGrammar:
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)  # (its root is an object)


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
