"""Prompt templates (``--prompt-type``): turn a conversation into input_ids + labels.

Each turn is tokenized separately and the pieces concatenated, so the prompt / response boundary
is exact in token space (the usual SFT practice, as in LLaMA-Factory / ModelLink). Prompt-side
tokens (system, user, tool observations, the assistant header) get label -100 (ignored by the
loss); the assistant's reply, including its end-of-turn marker, is the target.

Special markers such as ``<|im_end|>`` or ``<|eot_id|>`` are written as text: tokenizers that
define them as special tokens (the Hugging Face ones for those models) map them to single ids.
BOS / EOS come from the tokenizer's ids, never from text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

__all__ = ["IGNORE_INDEX", "Message", "Template", "TEMPLATES", "get_template", "ROLES"]

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "function_call", "observation")
_TARGET_ROLES = ("assistant", "function_call")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class Template:
    name: str
    system: str  # "{content}" format of the system block
    user: str  # user turn, ending with the assistant header (prompt side)
    assistant: str  # assistant reply (target side)
    observation: str  # tool output (prompt side), ending with the assistant header
    bos: bool = False  # prepend the tokenizer's BOS id
    bos_each_round: bool = False  # llama2: every user/assistant round starts with BOS
    eos_after_reply: bool = False  # append the tokenizer's EOS id after each reply (trainable)
    system_in_user: str | None = None  # llama2 puts the system prompt inside the first user turn
    tools: str = "You have access to the following tools:\n{tools}"
    default_system: str = ""
    end_of_turn: str = ""  # the marker that ends a reply (generation stops there); "" : EOS only

    def prompt(self, messages: list[Message], system: str | None, tokenizer) -> list[int]:
        """Token ids of a conversation that ends with a user turn, up to the assistant header:
        what generation continues from."""
        ids, _ = self.render(messages, system, None, tokenizer)
        return ids.tolist()

    def render(self, messages: list[Message], system: str | None, tools, tokenizer) -> tuple[np.ndarray, np.ndarray]:
        """Return (input_ids, labels) as int64 arrays; labels are -100 on prompt tokens."""
        system = system if system is not None else self.default_system
        if tools:
            tools_text = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
            system = ((system + "\n\n") if system else "") + self.tools.format(tools=tools_text)
        ids: list[int] = []
        labels: list[int] = []

        def add(token_ids: list[int], target: bool) -> None:
            ids.extend(token_ids)
            labels.extend(token_ids if target else [IGNORE_INDEX] * len(token_ids))

        if self.bos and tokenizer.bos is not None and not self.bos_each_round:
            add([tokenizer.bos], False)
        pending_system = system or ""
        if pending_system and self.system_in_user is None:
            add(tokenizer.encode_text(self.system.format(content=pending_system)), False)
            pending_system = ""
        for msg in messages:
            if msg.role in _TARGET_ROLES:
                add(tokenizer.encode_text(self.assistant.format(content=msg.content)), True)
                if self.eos_after_reply:
                    add([tokenizer.require_eod()], True)
                continue
            content = msg.content
            if msg.role == "user" and pending_system:
                content = self.system_in_user.format(system=pending_system, content=content)
                pending_system = ""
            if self.bos_each_round and tokenizer.bos is not None and msg.role == "user":
                add([tokenizer.bos], False)
            fmt = self.user if msg.role == "user" else self.observation
            add(tokenizer.encode_text(fmt.format(content=content)), False)
        return np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)


_LLAMA3_HDR = "<|start_header_id|>{role}<|end_header_id|>\n\n"
TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("plain", system="{content}\n\n", user="{content}\n", assistant="{content}",
                 observation="{content}\n", eos_after_reply=True),
        Template("llama2", system="", user="[INST] {content} [/INST]", assistant=" {content} ",
                 observation="[INST] {content} [/INST]", bos=True, bos_each_round=True, eos_after_reply=True,
                 system_in_user="<<SYS>>\n{system}\n<</SYS>>\n\n{content}"),
        Template("llama3",
                 system=_LLAMA3_HDR.format(role="system") + "{content}<|eot_id|>",
                 user=_LLAMA3_HDR.format(role="user") + "{content}<|eot_id|>" + _LLAMA3_HDR.format(role="assistant"),
                 assistant="{content}<|eot_id|>",
                 observation=_LLAMA3_HDR.format(role="ipython") + "{content}<|eot_id|>"
                 + _LLAMA3_HDR.format(role="assistant"),
                 bos=True, end_of_turn="<|eot_id|>"),
        Template("chatml", system="<|im_start|>system\n{content}<|im_end|>\n",
                 user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
                 assistant="{content}<|im_end|>\n",
                 observation="<|im_start|>tool\n{content}<|im_end|>\n<|im_start|>assistant\n",
                 end_of_turn="<|im_end|>"),
        # Grok-1 ships no chat template; this uses its tokenizer's <|separator|> piece (id 47)
        # between turns, in the Human:/Assistant: style of its examples.
        Template("grok1", system="{content}<|separator|>\n\n", user="Human: {content}<|separator|>\n\nAssistant:",
                 assistant=" {content}<|separator|>\n\n",
                 observation="Observation: {content}<|separator|>\n\nAssistant:", bos=True, eos_after_reply=True,
                 end_of_turn="<|separator|>"),
    )
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown --prompt-type {name!r}; choose one of {', '.join(TEMPLATES)}") from None
