"""LLaMA-Factory data as its users keep it: a ``dataset_info.json`` entry named on the command line.

``tools/preprocess_data.py --dataset-info data/dataset_info.json --input alpaca_en_demo`` reads the
entry ``alpaca_en_demo``: its ``file_name`` (relative to the file's folder), ``formatting``
(``alpaca``, the default, or ``sharegpt``), ``columns`` and, for sharegpt, ``tags``, with
LLaMA-Factory's defaults for everything left out. Each record is then renamed into the keys of
moetrain's Alpaca / ShareGPT handler. LLaMA-Factory trains the replies of an alpaca ``history`` too;
so does the Alpaca handler (every assistant turn is a target).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from moetrain.data.handlers import RecordError

# LLaMA-Factory's defaults (its DatasetAttr).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "tools": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# Their role tag -> the ShareGPT role moetrain's handler reads.
_ROLES = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
          "function_tag": "function_call", "system_tag": "system"}
HANDLER = {"alpaca": "AlpacaStyleInstructionHandler", "sharegpt": "SharegptStyleInstructionHandler"}


class DatasetInfoError(ValueError):
    """A dataset_info.json problem, naming the file and the entry."""


@dataclass(frozen=True)
class RecordMap:
    """Renames one LLaMA-Factory record into the keys of moetrain's handler for its formatting."""

    formatting: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)

    def apply(self, data: dict) -> dict:
        c = self.columns
        if self.formatting == "alpaca":
            if c["prompt"] not in data or c["response"] not in data:
                raise RecordError(f"missing column {c['prompt']!r} or {c['response']!r} (dataset_info columns); "
                                  f"keys present: {sorted(data)}")
            out = {"instruction": data[c["prompt"]], "input": data.get(c["query"]) or "",
                   "output": data[c["response"]]}
            for ours in ("history", "system"):
                if c.get(ours) and data.get(c[ours]) is not None:
                    out[ours] = data[c[ours]]
            return out
        turns = data.get(c["messages"])
        if not isinstance(turns, list):
            raise RecordError(f"missing column {c['messages']!r} (dataset_info columns); keys present: {sorted(data)}")
        roles = {self.tags[tag]: ours for tag, ours in _ROLES.items()}
        converted = []
        for i, turn in enumerate(turns):
            role = turn.get(self.tags["role_tag"]) if isinstance(turn, dict) else None
            if role not in roles:
                raise RecordError(f"{c['messages']}[{i}]: role {role!r} is none of the dataset_info tags {sorted(roles)}")
            converted.append({"from": roles[role], "value": turn.get(self.tags["content_tag"])})
        out = {"conversations": converted}
        for ours in ("system", "tools"):
            if c.get(ours) and data.get(c[ours]) is not None:
                out[ours] = data[c[ours]]
        return out


@dataclass(frozen=True)
class LlamaFactoryDataset:
    input: str  # the data file
    handler_name: str
    record_map: RecordMap


def resolve(dataset_info: str, name: str) -> LlamaFactoryDataset:
    path = Path(dataset_info)
    try:
        info = json.loads(path.read_text())
    except OSError as e:
        raise DatasetInfoError(f"--dataset-info {dataset_info}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DatasetInfoError(f"--dataset-info {dataset_info}: malformed JSON (line {e.lineno})") from None
    if name not in info:
        raise DatasetInfoError(f"--input {name!r} is not an entry of {dataset_info}; entries: {', '.join(sorted(info))}")
    entry = info[name]
    where = f"{dataset_info} entry {name!r}"
    if "file_name" not in entry:
        raise DatasetInfoError(f"{where}: no file_name (hub / script datasets are not read offline)")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in HANDLER:
        raise DatasetInfoError(f"{where}: formatting {formatting!r}; supported: alpaca, sharegpt")
    defaults = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    unknown = sorted(set(entry.get("columns", {})) - set(defaults))
    if unknown:
        raise DatasetInfoError(f"{where}: unknown columns {unknown} for {formatting}; known: {sorted(defaults)}")
    columns = {**defaults, **entry.get("columns", {})}
    tags = {**SHAREGPT_TAGS, **entry.get("tags", {})} if formatting == "sharegpt" else {}
    data_file = path.parent / entry["file_name"]
    if not data_file.exists():
        raise DatasetInfoError(f"{where}: file_name {entry['file_name']!r} not found next to it ({data_file})")
    return LlamaFactoryDataset(str(data_file), HANDLER[formatting], RecordMap(formatting, columns, tags))
