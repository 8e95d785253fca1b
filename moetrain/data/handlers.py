"""Handlers (``--handler-name``): one record in, token arrays out. They run in worker processes.

- ``GeneralPretrainHandler``: for each ``--json-keys`` key, the text (or list of sentences) is
  tokenized as Megatron-LM's Encoder does (no splitting, EOD appended after a non-empty document
  with ``--append-eod``), giving one document per key.
- Instruction handlers turn the record into a conversation (``Message`` list) and render it with
  the ``--prompt-type`` template into ``input_ids`` + ``labels`` (-100 on prompt tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from moetrain.data.templates import IGNORE_INDEX, Message, get_template

__all__ = ["RecordError", "Pretrained", "Sft", "HANDLERS", "PRETRAIN_HANDLER", "make_handler", "parse_record"]

PRETRAIN_HANDLER = "GeneralPretrainHandler"


class RecordError(ValueError):
    """This record cannot be used (malformed JSON, missing key...). The message names the problem."""


@dataclass
class Pretrained:
    docs: dict[str, tuple[np.ndarray, list[int]]]  # key -> (token ids, sentence lengths)
    empty_keys: list[str]


@dataclass
class Sft:
    input_ids: np.ndarray | None  # None: nothing to learn from (counted as empty)
    labels: np.ndarray | None


def parse_record(payload, fmt: str, text_key: str) -> dict:
    if isinstance(payload, dict):
        return payload
    if fmt == ".txt":
        return {text_key: payload}
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as e:
        raise RecordError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, got {type(data).__name__}")
    return data


def _get(data: dict, key: str, types=(str,)):
    if key not in data:
        raise RecordError(f"missing key {key!r}; keys present: {sorted(data)}")
    value = data[key]
    if not isinstance(value, types):
        raise RecordError(f"key {key!r} holds {type(value).__name__}, expected {'/'.join(t.__name__ for t in types)}")
    return value


class PretrainHandler:
    def __init__(self, tokenizer, json_keys: list[str], append_eod: bool, dtype) -> None:
        self.tok = tokenizer
        self.keys = json_keys
        self.eod = tokenizer.require_eod() if append_eod else None
        self.dtype = dtype

    def encode(self, data: dict) -> Pretrained:
        docs, empty = {}, []
        for key in self.keys:
            text = _get(data, key, (str, list))
            ids: list[int] = []
            lens: list[int] = []
            for sentence in text if isinstance(text, list) else [text]:
                sentence_ids = self.tok.tokenize(sentence)
                if sentence_ids:
                    ids.extend(sentence_ids)
                    lens.append(len(sentence_ids))
            if not ids:
                empty.append(key)
                continue
            if self.eod is not None:
                ids.append(self.eod)
                lens[-1] += 1
            docs[key] = (np.asarray(ids, dtype=self.dtype), lens)
        return Pretrained(docs, empty)


_ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system",
    "function_call": "function_call", "function": "observation",
    "observation": "observation", "tool": "observation", "ipython": "observation",
}


def _conversation(turns, where: str) -> tuple[list[Message], str | None]:
    """Normalize from/value or role/content turns; a leading system turn becomes the system prompt."""
    if not isinstance(turns, list):
        raise RecordError(f"{where} must be a list of turns")
    msgs: list[Message] = []
    system = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{where}[{i}] is not an object")
        role_key = "from" if "from" in turn else "role"
        content_key = "value" if "value" in turn else "content"
        raw_role = str(turn.get(role_key, ""))
        role = _ROLE_ALIASES.get(raw_role.lower())
        if role is None:
            raise RecordError(f"{where}[{i}]: unknown role {raw_role!r}; keys present: {sorted(turn)}")
        content = turn.get(content_key)
        if role == "assistant" and turn.get("tool_calls"):  # OpenAI-style tool call
            role, content = "function_call", json.dumps(turn["tool_calls"], ensure_ascii=False)
        if content is None:
            content = ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if role == "system":
            if msgs:
                raise RecordError(f"{where}[{i}]: a system turn is only allowed first")
            system = content
            continue
        msgs.append(Message(role, content))
    return msgs, system


class InstructionHandler:
    """Base: subclasses map a record to (messages, system, tools)."""

    def __init__(self, tokenizer, prompt_type: str) -> None:
        self.tok = tokenizer
        self.template = get_template(prompt_type)
        tokenizer.require_eod()

    def conversation(self, data: dict):
        raise NotImplementedError

    def encode(self, data: dict) -> Sft:
        msgs, system, tools = self.conversation(data)
        # A trailing prompt with no reply teaches nothing.
        while msgs and msgs[-1].role not in ("assistant", "function_call"):
            msgs.pop()
        if not msgs:
            return Sft(None, None)
        ids, labels = self.template.render(msgs, system, tools, self.tok)
        if not (labels != IGNORE_INDEX).any():
            return Sft(None, None)
        return Sft(ids, labels)


class AlpacaHandler(InstructionHandler):
    def conversation(self, data):
        prompt = _get(data, "instruction")
        extra = data.get("input") or ""
        if extra:
            prompt = f"{prompt}\n{extra}"
        msgs = []
        for i, pair in enumerate(data.get("history") or []):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise RecordError(f"history[{i}] must be a [query, response] pair")
            msgs += [Message("user", str(pair[0])), Message("assistant", str(pair[1]))]
        msgs += [Message("user", prompt), Message("assistant", _get(data, "output"))]
        return msgs, data.get("system"), data.get("tools")


class SharegptHandler(InstructionHandler):
    def conversation(self, data):
        key = "conversations" if "conversations" in data else "messages"
        msgs, system = _conversation(_get(data, key, (list,)), key)
        return msgs, data.get("system", system), data.get("tools")


class OpenAIHandler(InstructionHandler):
    def conversation(self, data):
        msgs, system = _conversation(_get(data, "messages", (list,)), "messages")
        return msgs, system, data.get("tools")


class MixedTypeHandler(InstructionHandler):
    """``{"type": "pretrain"|"instruct"|"conversation"|"ref_qa", ...}``."""

    def _rounds(self, data) -> list[Message]:
        msgs = []
        for i, rnd in enumerate(_get(data, "rounds", (list,))):
            if not (isinstance(rnd, list) and len(rnd) == 2 and rnd[0] in ("ask", "ans")):
                raise RecordError(f"rounds[{i}] must be [\"ask\"|\"ans\", text]")
            msgs.append(Message("user" if rnd[0] == "ask" else "assistant", str(rnd[1])))
        return msgs

    def conversation(self, data):
        kind = _get(data, "type")
        if kind == "instruct":
            prompt = _get(data, "instruct")
            if data.get("input"):
                prompt = f"{prompt}\n{data['input']}"
            return [Message("user", prompt), Message("assistant", _get(data, "output"))], data.get("system"), None
        if kind == "conversation":
            return self._rounds(data), data.get("system"), None
        if kind == "ref_qa":
            msgs = self._rounds(data)
            reference = _get(data, "reference")
            if msgs and msgs[0].role == "user":
                msgs[0] = Message("user", f"Reference:\n{reference}\n\n{msgs[0].content}")
            return msgs, data.get("system"), None
        raise RecordError(f"unknown type {kind!r}; expected pretrain, instruct, conversation or ref_qa")

    def encode(self, data):
        if data.get("type") == "pretrain":
            ids = self.tok.tokenize(_get(data, "text"))
            if not ids:
                return Sft(None, None)
            arr = np.asarray(ids + [self.tok.require_eod()], dtype=np.int64)
            return Sft(arr, arr.copy())  # plain text: every token is a target
        return super().encode(data)


HANDLERS = {
    PRETRAIN_HANDLER: PretrainHandler,
    "AlpacaStyleInstructionHandler": AlpacaHandler,
    "SharegptStyleInstructionHandler": SharegptHandler,
    "OpenAIStyleInstructionHandler": OpenAIHandler,
    "MixedTypeHandler": MixedTypeHandler,
}


def make_handler(name: str, tokenizer, json_keys: list[str], append_eod: bool, prompt_type: str, dtype):
    if name not in HANDLERS:
        raise ValueError(f"unknown --handler-name {name!r}; choose one of {', '.join(HANDLERS)}")
    if name == PRETRAIN_HANDLER:
        return PretrainHandler(tokenizer, json_keys, append_eod, dtype)
    return HANDLERS[name](tokenizer, prompt_type)
